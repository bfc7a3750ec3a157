//! `recvmsg` and `sendmsg` on a unix stream socket with up to [`MAX_FDS`] descriptors, without
//! allocating (vmm-sys-util's `ScmSocket` allocates its control buffer and iovecs per call),
//! with the flags the caller chooses (`MSG_DONTWAIT` for a non-blocking call on a blocking
//! socket) and received descriptors created close-on-exec (`MSG_CMSG_CLOEXEC`).

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, RawFd};

use crate::wire::MAX_FDS;

/// A control-message buffer for [`MAX_FDS`] descriptors, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct ControlBuffer([u8; CONTROL_SPACE]);

/// `CMSG_SPACE(MAX_FDS * sizeof(int))` on 64-bit Linux: a 16-byte header and the fds, rounded
/// up to 8 bytes. Checked against `libc::CMSG_SPACE` by a unit test.
const CONTROL_SPACE: usize = 16 + (MAX_FDS * 4).next_multiple_of(8);

/// What one [`recv`] brought besides the descriptors.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Received {
    /// Bytes read.
    pub bytes: usize,
    /// More than [`MAX_FDS`] descriptors came (the kernel truncated the control data): none was
    /// handed over, every one that arrived is closed. The bytes were read all the same.
    pub too_many_fds: bool,
}

/// One `recvmsg` into `buf` with `flags` (`MSG_CMSG_CLOEXEC` is added). Each descriptor that
/// came with the bytes is handed to `on_fd`, unless more than [`MAX_FDS`] came.
pub(crate) fn recv(
    fd: RawFd,
    buf: &mut [u8],
    flags: libc::c_int,
    mut on_fd: impl FnMut(File),
) -> io::Result<Received> {
    let mut control = ControlBuffer([0; CONTROL_SPACE]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = CONTROL_SPACE as _;
    // SAFETY: `msg` points at `iov` (into `buf`, borrowed mutably for the call) and at `control`,
    // both alive for the call and of the lengths given; the kernel writes only there.
    let n = unsafe { libc::recvmsg(fd, &mut msg, flags | libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let truncated = msg.msg_flags & libc::MSG_CTRUNC != 0;
    // SAFETY: the kernel filled `msg_controllen` bytes of `control` with well-formed cmsghdrs;
    // CMSG_FIRSTHDR/NXTHDR stay within them.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is a header inside `control` (above).
        let (level, kind, len) =
            unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type, (*cmsg).cmsg_len) };
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            // `cmsg_len` is a size_t with glibc, a u32 with musl.
            #[allow(clippy::unnecessary_cast)]
            let len = len as usize;
            // SAFETY: CMSG_LEN only computes a length.
            let data_len = len.saturating_sub(unsafe { libc::CMSG_LEN(0) } as usize);
            // SAFETY: the data of an SCM_RIGHTS message holds `data_len / 4` ints.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
            for i in 0..data_len / std::mem::size_of::<RawFd>() {
                // SAFETY: within the data (above); the ints may be unaligned in principle.
                let raw = unsafe { data.add(i).read_unaligned() };
                // SAFETY: recvmsg just installed this descriptor for us; nothing else owns it.
                let file = unsafe { File::from_raw_fd(raw) };
                if truncated {
                    drop(file);
                } else {
                    on_fd(file);
                }
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(Received {
        bytes: n as usize,
        too_many_fds: truncated,
    })
}

/// One `sendmsg` of `bytes` with `fds` (at most [`MAX_FDS`]) and `flags` (`MSG_NOSIGNAL` is
/// added: a closed peer is `EPIPE`, not a signal).
pub(crate) fn send(
    fd: RawFd,
    bytes: &[u8],
    fds: &[RawFd],
    flags: libc::c_int,
) -> io::Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let flags = flags | libc::MSG_NOSIGNAL;
    if fds.is_empty() {
        // SAFETY: `bytes` is valid for reads of its length for the call.
        let n = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), flags) };
        return if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        };
    }
    let mut control = ControlBuffer([0; CONTROL_SPACE]);
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    let fds_len = std::mem::size_of_val(fds) as u32;
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a length; it is at most CONTROL_SPACE (fds <= MAX_FDS).
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(fds_len) } as _;
    // SAFETY: the control buffer holds at least one header (msg_controllen > 0).
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    // SAFETY: `cmsg` points at the start of `control`, which has room for the header and the
    // fds (CMSG_SPACE above); the data may be unaligned for ints in principle.
    unsafe {
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fds_len) as _;
        let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
        for (i, fd) in fds.iter().enumerate() {
            data.add(i).write_unaligned(*fd);
        }
    }
    // SAFETY: `msg` points at `iov` (into `bytes`, only read by sendmsg) and `control`, both
    // alive for the call.
    let n = unsafe { libc::sendmsg(fd, &msg, flags) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn control_space_is_cmsg_space() {
        // SAFETY: CMSG_SPACE only computes a length.
        let want = unsafe { libc::CMSG_SPACE((MAX_FDS * 4) as u32) } as usize;
        assert_eq!(CONTROL_SPACE, want);
    }

    #[test]
    fn bytes_and_descriptors_round_trip() {
        let (a, b) = UnixStream::pair().unwrap();
        let (x, _y) = UnixStream::pair().unwrap();
        let fds = [x.as_raw_fd(); MAX_FDS];
        assert_eq!(send(a.as_raw_fd(), b"hello", &fds, 0).unwrap(), 5);
        let mut got = Vec::new();
        let mut buf = [0; 16];
        let r = recv(b.as_raw_fd(), &mut buf, 0, |f| got.push(f)).unwrap();
        assert_eq!((&buf[..r.bytes], r.too_many_fds), (&b"hello"[..], false));
        assert_eq!(got.len(), MAX_FDS);
        for f in &got {
            // SAFETY: fcntl on a descriptor we own.
            let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFD) };
            assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        }
        assert_eq!(
            send(a.as_raw_fd(), b"x", &[x.as_raw_fd(); MAX_FDS + 1], 0)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EINVAL)
        );
        // Nothing there: a non-blocking read is EAGAIN.
        let e = recv(b.as_raw_fd(), &mut buf, libc::MSG_DONTWAIT, |_| {}).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }
}
