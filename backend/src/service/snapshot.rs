//! The configuration snapshots frontends share with the backend (`SetConfigSnapshot`): one
//! writer per frontend, refreshed before the reply to every request that changed anything, so
//! a frontend that reads from it after a reply sees what the backend would answer.

use std::fs::File;

use log::{debug, warn};
use pcierc_protocol::snapshot::SnapshotWriter;
use pcierc_protocol::{ConnectionId, Status};

use super::RootComplex;

impl RootComplex {
    /// `SetConfigSnapshot` from `conn`: adopt and fill the region.
    pub(super) fn add_snapshot(&mut self, conn: ConnectionId, file: File) -> Result<(), Status> {
        let functions = self.hierarchy.snapshot_functions();
        let w = SnapshotWriter::new(file, functions).inspect_err(|s| {
            warn!("{conn}: configuration snapshot refused: {s}");
        })?;
        w.begin();
        for n in 0..functions {
            w.set_image(n, &self.hierarchy.snapshot_image(n));
        }
        let routes = self.hierarchy.snapshot_routes();
        w.set_routes(&routes);
        w.set_header(&self.hierarchy.snapshot_header());
        w.end();
        self.snapshot_routes = Some(routes);
        debug!("{conn}: configuration snapshot of {functions} functions");
        self.snapshots.insert(conn, w);
        Ok(())
    }

    /// Bring every snapshot up to date with the hierarchy.
    pub(super) fn sync_snapshots(&mut self) {
        let (changed, routes) = self.hierarchy.take_snapshot_changes();
        if self.snapshots.is_empty() {
            return;
        }
        let images: Vec<(usize, Vec<u8>)> = changed
            .iter()
            .map(|&n| (n, self.hierarchy.snapshot_image(n)))
            .collect();
        // Only the routing entries that changed are written (every snapshot holds the same
        // table: a new one is filled whole when it is added).
        let mut route_changes = Vec::new();
        if routes {
            let table = self.hierarchy.snapshot_routes();
            match &self.snapshot_routes {
                Some(old) => route_changes.extend(
                    table
                        .iter()
                        .zip(old.iter())
                        .enumerate()
                        .filter(|(_, (new, old))| new != old)
                        .map(|(i, (new, _))| (i, *new)),
                ),
                None => route_changes.extend(table.iter().copied().enumerate()),
            }
            self.snapshot_routes = Some(table);
        }
        let header = self.hierarchy.snapshot_header();
        for w in self.snapshots.values() {
            w.begin();
            for (n, image) in &images {
                w.set_image(*n, image);
            }
            for &(i, r) in &route_changes {
                w.set_route(i, r);
            }
            w.set_header(&header);
            w.end();
        }
    }
}
