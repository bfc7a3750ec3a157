//! The configuration snapshots frontends share with the backend (`SetConfigSnapshot`): one
//! writer per frontend, refreshed before the reply to every request that changed anything, so
//! a frontend that reads from it after a reply sees what the backend would answer.

use std::collections::BTreeMap;
use std::fs::File;

use log::{debug, warn};
use pcierc_protocol::snapshot::SnapshotWriter;
use pcierc_protocol::{ConnectionId, Status};

use crate::topology::Hierarchy;

/// Every frontend's snapshot writer, and the routing table they all hold.
#[derive(Default)]
pub struct Snapshots {
    writers: BTreeMap<ConnectionId, SnapshotWriter>,
    /// The routing table last written (every snapshot holds the same one).
    routes: Option<Box<[u16; 65536]>>,
}

impl Snapshots {
    /// `SetConfigSnapshot` from `conn`: adopt the region and fill it from `h`.
    pub fn add(&mut self, h: &Hierarchy, conn: ConnectionId, file: File) -> Result<(), Status> {
        let functions = h.snapshot_functions();
        let w = SnapshotWriter::new(file, functions).inspect_err(|s| {
            warn!("{conn}: configuration snapshot refused: {s}");
        })?;
        w.begin();
        for n in 0..functions {
            w.set_image(n, &h.snapshot_image(n));
        }
        let routes = h.snapshot_routes();
        w.set_routes(&routes);
        w.set_header(&h.snapshot_header());
        w.end();
        self.routes = Some(routes);
        debug!("{conn}: configuration snapshot of {functions} functions");
        self.writers.insert(conn, w);
        Ok(())
    }

    /// Connection `conn` is gone: its snapshot is no longer written.
    pub fn remove(&mut self, conn: ConnectionId) {
        self.writers.remove(&conn);
    }

    /// Bring every snapshot up to date with `h` (taking its record of what changed).
    pub fn sync(&mut self, h: &mut Hierarchy) {
        if self.writers.is_empty() {
            h.discard_snapshot_changes();
            return;
        }
        let (changed, routes) = h.take_snapshot_changes();
        let images: Vec<(usize, Vec<u8>)> =
            changed.iter().map(|&n| (n, h.snapshot_image(n))).collect();
        // Only the routing entries that changed are written (every snapshot holds the same
        // table: a new one is filled whole when it is added), and only the buses the hierarchy
        // says may have changed are looked at.
        let mut route_changes = Vec::new();
        let table = self.routes.get_or_insert_with(|| h.snapshot_routes());
        for bus in routes.iter() {
            let row = h.snapshot_route_row(bus);
            let base = usize::from(bus) << 8;
            let old = &mut table[base..][..256];
            if old[..] == row[..] {
                // Most recorded buses did not change (a range opened over empty buses).
                continue;
            }
            for (devfn, (new, old)) in row.iter().zip(old.iter_mut()).enumerate() {
                if new != old {
                    *old = *new;
                    route_changes.push((base | devfn, *new));
                }
            }
        }
        let header = h.snapshot_header();
        for w in self.writers.values() {
            w.begin();
            for (n, image) in &images {
                w.set_image(*n, image);
            }
            for &(i, r) in &route_changes {
                w.set_route(i, r);
            }
            if !routes.is_empty() {
                // Bus numbers, slot power or ownership changed: a frontend that maps the snapshot's pages
                // re-reads its layout even when no entry changed.
                w.mark_routing_changed();
            }
            w.set_header(&header);
            w.end();
        }
    }
}
