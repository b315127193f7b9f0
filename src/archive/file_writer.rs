//! The signing key and the database are written by a thread of their own, so the unpacking thread
//! reads, hashes and checks entries while this one writes what came before; files smaller than
//! [`INLINE_BELOW`] are written by the unpacking thread itself, as a hand-over would cost more than
//! the write. Media is written by the lanes of [`super::media_lanes`], which reuse this module's
//! buffers and its direct-I/O writes.
//!
//! Files are still created (`O_EXCL`, never through a link) by the caller, in archive order, so every
//! check on paths stays where it was; this thread only writes their data and then sets each file's
//! times, owner and mode through its descriptor. The first failure stops the writing: the caller
//! sees it on its next hand-over, or at [`FileWriter::finish`].
//!
//! Large files are written with direct I/O (`O_DIRECT`), from the reused, aligned hand-over buffers
//! straight to the disk. Everything staged must be on disk before the swap anyway (the stager ends
//! with a `syncfs`), so going around the page cache costs nothing there; it saves copying every
//! byte into freshly allocated cache pages (on this project's test machines that copy ran at
//! ~230 MB/s against ~1 GB/s direct), and a restore of many gigabytes does not evict the running
//! server's cache. Where a filesystem refuses direct I/O, writes fall back to the page cache.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;
use std::time::SystemTime;

use super::ArchiveError;

/// Bytes handed over at a time, and how many hand-overs may wait: ~2 MiB in flight. Large requests
/// keep direct I/O near the disk's speed.
pub(super) const BUF_SIZE: usize = 512 << 10;
const QUEUE: usize = 4;
/// What direct I/O needs of buffer addresses, file offsets and lengths (any device's logical block
/// size up to 4 KiB).
const ALIGN: usize = 4096;
/// Files smaller than this go through the page cache: one direct write is a round trip to the disk.
pub(super) const DIRECT_FROM: u64 = 128 << 10;
/// Files smaller than this are written by the caller's thread, not handed over.
pub(super) const INLINE_BELOW: u64 = 64 << 10;

/// What a finished file gets once its data is written.
pub struct FileMeta {
    /// From [`super::mtime_of`]: never past the year 9999.
    pub mtime: SystemTime,
    /// Owner to set (only when running as root).
    pub owner: Option<(u32, u32)>,
    /// Mode to set; None when the file was made with it.
    pub mode: Option<u32>,
}

enum Job {
    Start {
        file: File,
        path: PathBuf,
        size: u64,
    },
    /// a buffer and how much of it to write
    Data(Buffer, usize),
    Finish(FileMeta),
}

/// `BUF_SIZE` bytes at an `ALIGN`ed address, inside a slightly larger allocation.
pub(super) struct Buffer {
    bytes: Vec<u8>,
    start: usize,
}

impl Buffer {
    pub(super) fn new() -> Self {
        let bytes = vec![0; BUF_SIZE + ALIGN];
        // align_offset may in principle decline (usize::MAX): the window then stays unaligned and
        // direct writes of it fail with EINVAL, which falls back to the page cache
        let start = bytes.as_ptr().align_offset(ALIGN).min(ALIGN);
        Buffer { bytes, start }
    }

    pub(super) fn window(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + BUF_SIZE]
    }

    pub(super) fn filled(&self, n: usize) -> &[u8] {
        &self.bytes[self.start..self.start + n]
    }
}

pub struct FileWriter {
    /// None once finished
    jobs: Option<SyncSender<Job>>,
    spare: Receiver<Buffer>,
    /// a small file's data, on its way from the archive to the file
    small: Vec<u8>,
    /// None once joined
    thread: Option<JoinHandle<Result<(), ArchiveError>>>,
}

impl FileWriter {
    pub fn start() -> Result<Self, ArchiveError> {
        let (jobs, queue) = sync_channel(QUEUE);
        let (give_back, spare) = channel();
        // the thread drops `queue` when it stops, so a failure makes the next hand-over fail
        let thread = std::thread::Builder::new()
            .name("restore-writes".into())
            .spawn(move || write_all_jobs(queue, &give_back))
            .map_err(|e| ArchiveError::io("cannot start the thread that writes restored files", e))?;
        Ok(FileWriter {
            jobs: Some(jobs),
            spare,
            small: Vec::new(),
            thread: Some(thread),
        })
    }

    /// Copies `data` (`size` bytes, as the archive says) into `file` (already created at `path`),
    /// then sets `meta` on it.
    pub fn write(
        &mut self,
        file: File,
        path: PathBuf,
        data: &mut dyn Read,
        size: u64,
        entry: &str,
        meta: FileMeta,
    ) -> Result<(), ArchiveError> {
        if size < INLINE_BELOW {
            if self.jobs.is_none() {
                return Err(ended());
            }
            self.small.resize(size as usize, 0);
            let n = super::read_full(data, &mut self.small).map_err(|e| ArchiveError::read(entry, e))?;
            let mut file = file;
            return file
                .write_all(&self.small[..n])
                .and_then(|()| finish_file(&file, &meta))
                .map_err(|e| ArchiveError::stage(&path, e));
        }
        self.send(Job::Start { file, path, size })?;
        loop {
            let mut buf = self.spare.try_recv().unwrap_or_else(|_| Buffer::new());
            let n = super::read_full(data, buf.window()).map_err(|e| ArchiveError::read(entry, e))?;
            if n == 0 {
                break;
            }
            self.send(Job::Data(buf, n))?;
            if n < BUF_SIZE {
                break;
            }
        }
        self.send(Job::Finish(meta))
    }

    /// Waits until everything handed over is written; the first failure, if any. Once finished,
    /// nothing more can be written, and finishing again is Ok (the outcome was told the first time).
    pub fn finish(&mut self) -> Result<(), ArchiveError> {
        drop(self.jobs.take());
        match self.thread.take().map(JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(p)) => Err(ArchiveError::Internal(format!(
                "the thread writing the restored files panicked: {}",
                super::cause::panic_text(p.as_ref())
            ))),
        }
    }

    /// Hands `job` over; when the thread has stopped on a failure, that failure.
    fn send(&mut self, job: Job) -> Result<(), ArchiveError> {
        let Some(jobs) = &self.jobs else {
            return Err(ended());
        };
        if jobs.send(job).is_ok() {
            return Ok(());
        }
        self.finish()?;
        Err(ArchiveError::io(
            "writing the restored files",
            io::Error::other("the writing thread stopped"),
        ))
    }
}

fn ended() -> ArchiveError {
    ArchiveError::io(
        "writing the restored files",
        io::Error::other("the writing already ended"),
    )
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

struct Current {
    file: File,
    path: PathBuf,
    direct: bool,
}

fn write_all_jobs(queue: Receiver<Job>, give_back: &Sender<Buffer>) -> Result<(), ArchiveError> {
    let mut current: Option<Current> = None;
    for job in queue {
        match job {
            Job::Start { file, path, size } => {
                let direct = size >= DIRECT_FROM && set_direct(&file, true).is_ok();
                current = Some(Current { file, path, direct });
            }
            Job::Data(buf, n) => {
                if let Some(c) = &mut current {
                    write_chunk(&mut c.file, buf.filled(n), &mut c.direct)
                        .map_err(|e| ArchiveError::stage(&c.path, e))?;
                }
                let _ = give_back.send(buf);
            }
            Job::Finish(meta) => {
                if let Some(c) = current.take() {
                    finish_file(&c.file, &meta).map_err(|e| ArchiveError::stage(&c.path, e))?;
                }
            }
        }
    }
    Ok(())
}

/// Writes `data` at the file's offset: its aligned part directly when `direct` is on, the rest (a
/// file's last few bytes, or everything once direct I/O was refused) through the page cache.
pub(super) fn write_chunk(file: &mut File, data: &[u8], direct: &mut bool) -> io::Result<()> {
    let mut done = 0;
    if *direct {
        let aligned = data.len() / ALIGN * ALIGN;
        while done < aligned && done % ALIGN == 0 {
            match file.write(&data[done..aligned]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => done += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // this filesystem or device takes no direct write like this one: cached from here
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
                Err(e) => return Err(e),
            }
        }
        if done < data.len() {
            set_direct(file, false)?;
            *direct = false;
        }
    }
    file.write_all(&data[done..])
}

pub(super) fn set_direct(file: &File, on: bool) -> io::Result<()> {
    use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};
    let flags = fcntl_getfl(file)?;
    let flags = if on {
        flags | OFlags::DIRECT
    } else {
        flags - OFlags::DIRECT
    };
    fcntl_setfl(file, flags)?;
    Ok(())
}

/// Times first (writing changed them), then owner, then mode (a change of owner clears set-id bits).
pub(super) fn finish_file(file: &File, meta: &FileMeta) -> io::Result<()> {
    let _ = file.set_modified(meta.mtime);
    if let Some((uid, gid)) = meta.owner {
        std::os::unix::fs::fchown(file, Some(uid), Some(gid))?;
    }
    match meta.mode {
        Some(mode) => {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(mode & 0o777))
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn meta(mode: u32) -> FileMeta {
        FileMeta {
            mtime: crate::archive::mtime_of(1_700_000_000).unwrap(),
            owner: None,
            mode: Some(mode),
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    #[test]
    fn files_of_every_size_around_the_alignment_and_buffer_edges_come_out_whole() {
        let dir = tempfile::tempdir().unwrap();
        let sizes = [
            0,
            1,
            ALIGN - 1,
            ALIGN,
            DIRECT_FROM as usize - 1,
            DIRECT_FROM as usize,
            DIRECT_FROM as usize + 1,
            BUF_SIZE - 1,
            BUF_SIZE,
            BUF_SIZE + 1,
            3 * BUF_SIZE + ALIGN + 123,
        ];
        let mut writer = FileWriter::start().unwrap();
        for (i, size) in sizes.iter().enumerate() {
            let path = dir.path().join(format!("f{i}"));
            let file = File::create(&path).unwrap();
            let data = pattern(*size);
            writer
                .write(file, path, &mut &data[..], *size as u64, "f", meta(0o640))
                .unwrap();
        }
        writer.finish().unwrap();
        for (i, size) in sizes.iter().enumerate() {
            let path = dir.path().join(format!("f{i}"));
            assert!(std::fs::read(&path).unwrap() == pattern(*size), "size {size}");
            let md = std::fs::metadata(&path).unwrap();
            assert_eq!(md.permissions().mode() & 0o777, 0o640, "size {size}");
            assert_eq!(md.mtime(), 1_700_000_000, "size {size}");
        }
    }

    #[test]
    fn a_broken_stream_is_reported_for_its_entry() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("cut"))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut writer = FileWriter::start().unwrap();
        let e = writer
            .write(
                File::create(&path).unwrap(),
                path,
                &mut Broken,
                10,
                "media/x",
                meta(0o600),
            )
            .unwrap_err();
        assert!(
            e.to_string().contains("media/x") && e.to_string().contains("cut"),
            "{e}"
        );
    }

    #[test]
    fn a_full_disk_says_so() {
        // /dev/full: every write fails with ENOSPC, as on a full filesystem
        let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
            eprintln!("not run: no /dev/full");
            return;
        };
        let mut writer = FileWriter::start().unwrap();
        let data = pattern(300 << 10);
        let first = writer.write(full, "/staged/x".into(), &mut &data[..], 300 << 10, "x", meta(0o600));
        let e = first.and_then(|()| writer.finish()).unwrap_err();
        assert!(matches!(e, ArchiveError::DiskFull { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains("the disk is full") && text.contains("/staged/x") && text.contains("nothing was changed"),
            "{text}"
        );
    }

    #[test]
    fn a_failed_write_names_the_file_and_stops_what_follows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("read-only");
        std::fs::write(&path, b"").unwrap();
        let mut writer = FileWriter::start().unwrap();
        let data = pattern(300 << 10);
        // a descriptor open for reading only: every write fails
        let first = writer.write(
            File::open(&path).unwrap(),
            path.clone(),
            &mut &data[..],
            300 << 10,
            "a",
            meta(0o600),
        );
        let mut later = Ok(());
        for _ in 0..20 {
            later = later.and_then(|()| {
                let p = dir.path().join("later");
                let _ = std::fs::remove_file(&p);
                writer.write(
                    File::create(&p).unwrap(),
                    p,
                    &mut &data[..],
                    300 << 10,
                    "b",
                    meta(0o600),
                )
            });
        }
        let e = first.and(later).and_then(|()| writer.finish()).unwrap_err();
        assert!(e.to_string().contains("read-only"), "{e}");
    }
}
