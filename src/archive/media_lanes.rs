//! Media is restored on several threads ("lanes"), so that making inodes — nearly all of a
//! many-small-files restore's time, spent in the kernel — runs on every core.
//!
//! The stager (on the unpacking thread) checks each media entry and hands it to the lane that owns
//! the first directory below its media root. Every entry of one such subtree goes to one lane, in
//! archive order, so a lane walks its subtrees as a single-threaded restore would (a stack of open
//! directories, each given its metadata when the walk leaves it) and no two lanes ever make or
//! change the same directory; only the media roots are shared, and the stager applies their
//! metadata after every lane is done. Entries go over in batches (many small files' data in one
//! message); a large file's data follows its entry in reused, aligned buffers, written with direct
//! I/O as [`super::file_writer`] does.
//!
//! A hard link may point into another lane's subtree: every lane is drained before it is made and
//! again after, so its target is the file archive order says. A lane stops at its first failure;
//! the stager sees it at its next hand-over to that lane, or at [`Lanes::finish`].

use std::ffi::OsStr;
use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use rustix::fs::FileType;

use super::file_writer::{self, Buffer, FileMeta};
use super::handle::DirHandle;
use super::rules::{self, Role};
use super::ArchiveError;

/// Owner (uid, gid) given to what is restored, when running as root.
pub(super) type Owner = Option<(u32, u32)>;

/// Mode of a directory the backup has no entry for (Synapse's umask gives the same).
pub(super) const IMPLICIT_DIR_MODE: u32 = 0o755;

/// A batch is handed over once it holds this many bytes of file data, or this many entries.
const BATCH_BYTES: usize = 64 << 10;
const BATCH_ENTRIES: usize = 256;
/// Batches that may wait for each lane: enough for several of a media store's first-level shard
/// directories (~100 KiB each on a large community server), so that a run of entries for one lane
/// does not leave the other idle.
const QUEUE: usize = 48;
/// Aligned buffers carrying large files' data, at most (512 KiB each).
const MAX_BUFFERS: usize = 8;

/// Metadata to apply to a staged directory once every entry in it is made.
#[derive(Clone, Copy)]
pub(super) struct DirMeta {
    pub mode: u32,
    pub mtime: Option<SystemTime>,
    pub owner: Owner,
}

impl DirMeta {
    pub fn implicit(owner: Owner) -> Self {
        DirMeta {
            mode: IMPLICIT_DIR_MODE,
            mtime: None,
            owner,
        }
    }

    /// Through the directory's handle: owner and mode, then its time (last: making entries in it
    /// changed it).
    pub fn apply(&self, dir: &DirHandle) -> io::Result<()> {
        dir.set_owner_and_mode(self.owner, dir_mode(self.mode))?;
        self.apply_mtime(dir);
        Ok(())
    }

    /// As [`DirMeta::apply`], leaving out what the directory was made with.
    fn apply_to_made(&self, dir: &DirHandle, made: Made) -> io::Result<()> {
        let mode = dir_mode(self.mode);
        match (self.owner.filter(|o| made.owner != Some(*o)), made.mode == Some(mode)) {
            (None, true) => {}
            (owner, _) => dir.set_owner_and_mode(owner, mode)?,
        }
        self.apply_mtime(dir);
        Ok(())
    }

    fn apply_mtime(&self, dir: &DirHandle) {
        if let Some(mtime) = self.mtime {
            let _ = dir.set_mtime(mtime);
        }
    }
}

/// A restored directory's mode: what the backup says, but always usable by its owner (Synapse
/// creates shards and caches in them), and never set-id.
pub(super) fn dir_mode(mode: u32) -> u32 {
    (mode & 0o1777) | 0o700
}

/// Where a media entry goes.
pub(super) struct Place {
    pub role: Role,
    /// the role's staged root
    pub root: Arc<DirHandle>,
    /// the entry's name in the archive, for messages
    pub entry: String,
    /// its path below the root, never empty
    pub rest: String,
    pub owner: Owner,
}

impl Place {
    /// The lane of the entry's first directory below the root (a file in the root: its own name).
    fn lane(&self, lanes: usize) -> usize {
        let first = self.rest.split('/').next().unwrap_or_default();
        let mut h = DefaultHasher::new();
        (self.role, first).hash(&mut h);
        (h.finish() % lanes as u64) as usize
    }

    fn split(&self) -> (&Path, &OsStr) {
        let rel = Path::new(&self.rest);
        (
            rel.parent().unwrap_or(Path::new("")),
            rel.file_name().unwrap_or_default(),
        )
    }
}

enum Body {
    Small(Vec<u8>),
    /// the data follows in [`Op::Chunk`]s, then [`Op::End`]
    Large(u64),
}

enum Op {
    Dir(Place, DirMeta),
    File {
        place: Place,
        mode: u32,
        mtime: SystemTime,
        body: Body,
    },
    /// (None once the lane gave the buffer back)
    Chunk(Option<Buffer>, usize),
    End,
    Symlink(Place, String),
    /// a hard link to the file at `target` (below the same root)
    HardLink {
        place: Place,
        target: String,
    },
    Barrier(SyncSender<()>),
}

struct Lane {
    /// None once finished
    jobs: Option<SyncSender<Vec<Op>>>,
    /// batches the lane is done with
    done: Receiver<Vec<Op>>,
    batch: Vec<Op>,
    bytes: usize,
    /// None once joined
    thread: Option<JoinHandle<Result<(), ArchiveError>>>,
}

pub(super) struct Lanes {
    lanes: Vec<Lane>,
    spare: Receiver<Buffer>,
    buffers: usize,
}

impl Lanes {
    /// `umask`: the process's, when known (files are then made with their mode).
    pub fn start(umask: Option<u32>) -> Result<Self, ArchiveError> {
        let count = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
        let (give_back, spare) = channel();
        let mut lanes = Vec::with_capacity(count);
        for i in 0..count {
            let (jobs, queue) = sync_channel(QUEUE);
            let (hand_back, done) = channel();
            let give_back = give_back.clone();
            // the thread drops `queue` when it stops, so a failure makes the next hand-over fail
            let thread = std::thread::Builder::new()
                .name(format!("restore-media-{i}"))
                .spawn(move || Walker::new(umask, give_back).run(queue, hand_back))
                .map_err(|e| ArchiveError::io("cannot start a thread that writes restored media", e))?;
            lanes.push(Lane {
                jobs: Some(jobs),
                done,
                batch: Vec::new(),
                bytes: 0,
                thread: Some(thread),
            });
        }
        Ok(Lanes {
            lanes,
            spare,
            buffers: 0,
        })
    }

    pub fn dir(&mut self, place: Place, meta: DirMeta) -> Result<(), ArchiveError> {
        let lane = place.lane(self.lanes.len());
        self.push(lane, Op::Dir(place, meta), 0)
    }

    pub fn symlink(&mut self, place: Place, target: String) -> Result<(), ArchiveError> {
        let lane = place.lane(self.lanes.len());
        self.push(lane, Op::Symlink(place, target), 0)
    }

    /// A file of `size` bytes (as the archive says) whose data is read from `data`.
    pub fn file(
        &mut self,
        place: Place,
        mode: u32,
        mtime: SystemTime,
        size: u64,
        data: &mut dyn Read,
    ) -> Result<(), ArchiveError> {
        let lane = place.lane(self.lanes.len());
        if size < file_writer::INLINE_BELOW {
            let mut body = vec![0; size as usize];
            let n = super::read_full(data, &mut body).map_err(|e| ArchiveError::read(&place.entry, e))?;
            body.truncate(n);
            let op = Op::File {
                place,
                mode,
                mtime,
                body: Body::Small(body),
            };
            return self.push(lane, op, n);
        }
        let entry = place.entry.clone();
        let op = Op::File {
            place,
            mode,
            mtime,
            body: Body::Large(size),
        };
        self.push(lane, op, 0)?;
        loop {
            let mut buf = self.buffer()?;
            let n = super::read_full(data, buf.window()).map_err(|e| ArchiveError::read(&entry, e))?;
            if n > 0 {
                self.push(lane, Op::Chunk(Some(buf), n), n)?;
                self.flush(lane)?;
            }
            if n < file_writer::BUF_SIZE {
                break;
            }
        }
        self.push(lane, Op::End, 0)
    }

    /// A hard link to `target` (a file earlier in the archive, below the same root), made while
    /// no lane is writing anything else.
    pub fn hard_link(&mut self, place: Place, target: String) -> Result<(), ArchiveError> {
        self.barrier()?;
        let lane = place.lane(self.lanes.len());
        self.push(lane, Op::HardLink { place, target }, 0)?;
        self.barrier()
    }

    /// Waits until every lane has written everything handed over, and has given every directory
    /// its metadata; the first failure, if any. Finishing again is Ok (the outcome was told the
    /// first time).
    pub fn finish(&mut self) -> Result<(), ArchiveError> {
        let mut first = Ok(());
        for i in 0..self.lanes.len() {
            if let Err(e) = self.flush(i) {
                first = first.and(Err(e));
            }
        }
        for lane in &mut self.lanes {
            drop(lane.jobs.take());
        }
        for i in 0..self.lanes.len() {
            if let Err(e) = self.join(i) {
                first = first.and(Err(e));
            }
        }
        first
    }

    fn push(&mut self, lane: usize, op: Op, bytes: usize) -> Result<(), ArchiveError> {
        let l = &mut self.lanes[lane];
        if l.batch.capacity() == 0 {
            // one the lane is done with: what it holds is freed here, by the thread that
            // allocated it (glibc frees another thread's blocks under a lock that thread takes
            // for every allocation: with a batch freed by each lane, the threads waited on it
            // more than on the disk)
            if let Ok(mut done) = l.done.try_recv() {
                done.clear();
                l.batch = done;
            }
        }
        l.batch.push(op);
        l.bytes += bytes;
        if l.bytes >= BATCH_BYTES || l.batch.len() >= BATCH_ENTRIES {
            self.flush(lane)?;
        }
        Ok(())
    }

    fn flush(&mut self, lane: usize) -> Result<(), ArchiveError> {
        let l = &mut self.lanes[lane];
        if l.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut l.batch);
        l.bytes = 0;
        let sent = match &l.jobs {
            Some(jobs) => jobs.send(batch).is_ok(),
            None => return Err(ended()),
        };
        if sent {
            return Ok(());
        }
        self.join(lane)?;
        Err(stopped())
    }

    /// Every lane has done everything handed over so far.
    fn barrier(&mut self) -> Result<(), ArchiveError> {
        let mut acks = Vec::with_capacity(self.lanes.len());
        for i in 0..self.lanes.len() {
            let (ack, done) = sync_channel(1);
            self.push(i, Op::Barrier(ack), 0)?;
            self.flush(i)?;
            acks.push(done);
        }
        for (i, done) in acks.into_iter().enumerate() {
            if done.recv().is_err() {
                self.join(i)?;
                return Err(stopped());
            }
        }
        Ok(())
    }

    /// A buffer for a large file's data: a spare one, a new one while there are few, else the
    /// next one a lane gives back.
    fn buffer(&mut self) -> Result<Buffer, ArchiveError> {
        if let Ok(buf) = self.spare.try_recv() {
            return Ok(buf);
        }
        if self.buffers < MAX_BUFFERS {
            self.buffers += 1;
            return Ok(Buffer::new());
        }
        loop {
            if let Ok(buf) = self.spare.recv_timeout(Duration::from_millis(50)) {
                return Ok(buf);
            }
            // the buffers are in lanes that are writing, unless one stopped on a failure
            let stopped_lane = self
                .lanes
                .iter()
                .position(|l| l.thread.as_ref().is_none_or(JoinHandle::is_finished));
            if let Some(i) = stopped_lane {
                self.join(i)?;
                return Err(stopped());
            }
        }
    }

    fn join(&mut self, lane: usize) -> Result<(), ArchiveError> {
        let l = &mut self.lanes[lane];
        drop(l.jobs.take());
        match l.thread.take().map(JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(p)) => Err(ArchiveError::Internal(format!(
                "a thread writing the restored media panicked: {}",
                super::cause::panic_text(p.as_ref())
            ))),
        }
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        let _ = self.finish(); // nothing may still be writing into what the stager removes
    }
}

fn ended() -> ArchiveError {
    ArchiveError::io(
        "writing the restored media",
        io::Error::other("the writing already ended"),
    )
}

fn stopped() -> ArchiveError {
    ArchiveError::io(
        "writing the restored media",
        io::Error::other("a writing thread stopped"),
    )
}

/// A staged media directory a lane's walk is in: entries come in tree order, so when the walk
/// leaves it, nothing more is made in it and its metadata is applied then. What is open is one
/// path of the tree, whatever its size.
struct OpenDir {
    role: Role,
    /// below the role's staged root, never empty
    rel: PathBuf,
    dir: Arc<DirHandle>,
    meta: DirMeta,
    made: Made,
}

/// What a directory this lane made was given as it was made: nothing of it is set again.
#[derive(Clone, Copy, Default)]
struct Made {
    owner: Option<(u32, u32)>,
    mode: Option<u32>,
}

/// A large file being written from the chunks that follow its entry.
struct Streaming {
    file: File,
    path: PathBuf,
    direct: bool,
    meta: FileMeta,
}

/// One lane's side: applies the entries handed to it, in order.
struct Walker {
    open: Vec<OpenDir>,
    streaming: Option<Streaming>,
    umask: Option<u32>,
    give_back: Sender<Buffer>,
    ids: FsIds,
}

impl Walker {
    fn new(umask: Option<u32>, give_back: Sender<Buffer>) -> Self {
        Walker {
            open: Vec::new(),
            streaming: None,
            umask,
            give_back,
            ids: FsIds::of_process(),
        }
    }

    /// Applies each batch, and hands it back (see [`Lanes::push`]).
    fn run(mut self, queue: Receiver<Vec<Op>>, hand_back: Sender<Vec<Op>>) -> Result<(), ArchiveError> {
        for mut batch in queue {
            for op in &mut batch {
                self.apply(op)?;
            }
            let _ = hand_back.send(batch);
        }
        // innermost first: a directory's mtime changes when something is made in it
        while !self.open.is_empty() {
            self.leave_one()?;
        }
        Ok(())
    }

    fn apply(&mut self, op: &mut Op) -> Result<(), ArchiveError> {
        match op {
            Op::Dir(place, meta) => {
                self.dir(place, Path::new(&place.rest), Some(*meta))?;
                Ok(())
            }
            Op::File {
                place,
                mode,
                mtime,
                body,
            } => {
                let (parent, name) = place.split();
                let dir = self.dir(place, parent, None)?;
                let owner = self.ids.become_owner(place.owner);
                let (file, mode) = create_fresh(&dir, name, *mode, self.umask, &place.entry)?;
                let meta = FileMeta {
                    mtime: *mtime,
                    owner,
                    mode,
                };
                match body {
                    Body::Small(data) => {
                        let mut file = file;
                        file.write_all(data)
                            .and_then(|()| file_writer::finish_file(&file, &meta))
                            .map_err(|e| ArchiveError::stage(&dir.join(name), e))
                    }
                    Body::Large(size) => {
                        let direct = *size >= file_writer::DIRECT_FROM && file_writer::set_direct(&file, true).is_ok();
                        self.streaming = Some(Streaming {
                            file,
                            path: dir.join(name),
                            direct,
                            meta,
                        });
                        Ok(())
                    }
                }
            }
            Op::Chunk(buf, n) => {
                let Some(buf) = buf.take() else {
                    return Ok(());
                };
                let written = match &mut self.streaming {
                    Some(s) => file_writer::write_chunk(&mut s.file, buf.filled(*n), &mut s.direct)
                        .map_err(|e| ArchiveError::stage(&s.path, e)),
                    None => Ok(()),
                };
                let _ = self.give_back.send(buf);
                written
            }
            Op::End => match self.streaming.take() {
                Some(s) => file_writer::finish_file(&s.file, &s.meta).map_err(|e| ArchiveError::stage(&s.path, e)),
                None => Ok(()),
            },
            Op::Symlink(place, target) => {
                let (parent, name) = place.split();
                let dir = self.dir(place, parent, None)?;
                let owner = self.ids.become_owner(place.owner);
                let made = match dir.symlink(OsStr::new(target.as_str()), name) {
                    Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
                        make_room(&dir, name, &place.entry)?;
                        dir.symlink(OsStr::new(target.as_str()), name)
                    }
                    made => made,
                };
                made.and_then(|()| match owner {
                    Some((uid, gid)) => dir.chown(name, uid, gid),
                    None => Ok(()),
                })
                .map_err(|e| ArchiveError::stage(&dir.join(name), e))
            }
            Op::HardLink { place, target } => self.hard_link(place, target),
            Op::Barrier(ack) => {
                let _ = ack.send(());
                Ok(())
            }
        }
    }

    /// The staged directory `rel` of the place's role (its root when `rel` is empty), made (as
    /// the archive's order needs) if missing, never through a link; the walk leaves, and gives
    /// their metadata to, the open directories not on the way to it. `meta`: the directory's
    /// own entry, for `rel` itself (others have no entry before theirs: [`DirMeta::implicit`]).
    fn dir(&mut self, place: &Place, rel: &Path, meta: Option<DirMeta>) -> Result<Arc<DirHandle>, ArchiveError> {
        while let Some(top) = self.open.last() {
            if top.role == place.role && rel.starts_with(&top.rel) {
                break;
            }
            self.leave_one()?;
        }
        let (mut at, mut so_far) = match self.open.last() {
            Some(top) => (top.dir.clone(), top.rel.clone()),
            None => (place.root.clone(), PathBuf::new()),
        };
        let rest = rel.strip_prefix(&so_far).unwrap_or(rel).to_path_buf();
        let mut own = meta;
        let parts = rest.components().count();
        for (i, c) in rest.components().enumerate() {
            let Component::Normal(part) = c else {
                let e = io::Error::new(io::ErrorKind::InvalidInput, "not a plain relative path");
                return Err(through_link(&place.entry, e));
            };
            so_far.push(part);
            let entry_meta = if i + 1 == parts { own.take() } else { None };
            // made with its owner and its mode where it can be (the staging directory is private
            // until the swap), so that leaving it sets only its time
            let owner_left = self.ids.become_owner(place.owner);
            let mode = dir_mode(entry_meta.as_ref().map_or(IMPLICIT_DIR_MODE, |m| m.mode));
            let (dir, made) = at.make_child(part, mode).map_err(|e| through_link(&place.entry, e))?;
            let meta = if let Some(meta) = entry_meta {
                meta
            } else if made {
                DirMeta::implicit(place.owner)
            } else {
                // made by this restore (the staging directory was empty), and left before: what
                // was applied to it then is applied again when it is left this time
                let st = dir.metadata().map_err(|e| ArchiveError::stage(&at.join(part), e))?;
                let mtime = u64::try_from(st.st_mtime)
                    .ok()
                    .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
                DirMeta {
                    mode: st.st_mode & 0o7777,
                    mtime,
                    owner: place.owner,
                }
            };
            let made = match made {
                true => Made {
                    owner: place.owner.filter(|_| owner_left.is_none()),
                    mode: self.umask.filter(|mask| mode & mask == 0).map(|_| mode),
                },
                false => Made::default(),
            };
            let dir = Arc::new(dir);
            self.open.push(OpenDir {
                role: place.role,
                rel: so_far.clone(),
                dir: dir.clone(),
                meta,
                made,
            });
            at = dir;
        }
        if let (Some(meta), Some(top)) = (own, self.open.last_mut()) {
            // `rel` was open already: its entry comes after entries below it
            top.meta = meta;
            top.made = Made::default();
        }
        Ok(at)
    }

    /// The walk leaves the innermost open directory: it gets its metadata.
    fn leave_one(&mut self) -> Result<(), ArchiveError> {
        if let Some(d) = self.open.pop() {
            d.meta
                .apply_to_made(&d.dir, d.made)
                .map_err(|e| ArchiveError::stage(d.dir.path(), e))?;
        }
        Ok(())
    }

    /// A hard link to an earlier file below the same root, found component by component among
    /// what this restore made (never through a link), and checked to be a regular file still.
    fn hard_link(&mut self, place: &Place, target: &str) -> Result<(), ArchiveError> {
        let (parent, name) = place.split();
        let dir = self.dir(place, parent, None)?;
        make_room(&dir, name, &place.entry)?;
        let not_restored = || {
            ArchiveError::hostile(
                &place.entry,
                format!("a hard link to {target:?}, which is not a file restored before it"),
            )
        };
        let trel = Path::new(target);
        let (sdir, _) = place
            .root
            .descend(trel.parent().unwrap_or(Path::new("")), None)
            .map_err(|_| not_restored())?;
        let sname = trel.file_name().unwrap_or_default();
        match sdir.stat(sname) {
            Ok(Some(st)) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {}
            _ => return Err(not_restored()),
        }
        dir.hard_link(&sdir, sname, name)
            .map_err(|e| ArchiveError::stage(&dir.join(name), e))
    }
}

/// The file-system user and group a lane's thread makes inodes with. Running as root, a lane takes
/// on the owner of what it makes (`setfsuid(2)`, for its thread only) so that nothing it makes
/// needs a `chown` after: on a media store of small files that is a system call in four. Creating
/// as that user is safe here: the lane makes entries only in directories it made itself (or its
/// role's staged root, given the same owner), all of them that user's.
struct FsIds {
    current: (u32, u32),
    can_switch: bool,
}

impl FsIds {
    fn of_process() -> Self {
        let uid = rustix::process::geteuid();
        FsIds {
            current: (uid.as_raw(), rustix::process::getegid().as_raw()),
            can_switch: uid.is_root(),
        }
    }

    /// Makes the next inodes this thread creates belong to `owner`, where it can; the owner still
    /// to set on them (None: nothing to set).
    fn become_owner(&mut self, owner: Owner) -> Owner {
        let want = owner?;
        if want == self.current {
            return None;
        }
        if self.can_switch {
            if switch_fs_ids(want) {
                self.current = want;
                return None;
            }
            // not again for every entry; and whatever the ids are now, they are set after
            self.can_switch = false;
            self.current = (u32::MAX, u32::MAX);
        }
        Some(want)
    }
}

/// Sets the calling thread's file-system ids; whether both took.
fn switch_fs_ids((uid, gid): (u32, u32)) -> bool {
    // SAFETY: setfsuid and setfsgid change the file-system credentials of the calling thread only
    // (the C library does not pass them on to other threads); they touch no memory. Called with
    // an invalid id (-1) they change nothing and return the current one.
    unsafe {
        libc::setfsgid(gid);
        libc::setfsuid(uid);
        libc::setfsgid(u32::MAX) as u32 == gid && libc::setfsuid(u32::MAX) as u32 == uid
    }
}

/// A new file `name` in `dir` for an entry of `mode`, made with that mode when the umask leaves it
/// whole (a private staging directory: no one else can open it meanwhile); and the mode still to
/// set, when it could not be. A file or link of that name made by an earlier entry is replaced.
pub(super) fn create_fresh(
    dir: &DirHandle,
    name: &OsStr,
    mode: u32,
    umask: Option<u32>,
    entry: &str,
) -> Result<(File, Option<u32>), ArchiveError> {
    // its owner must be able to read and write it (Synapse opens its database read-write)
    let mode = (mode & 0o777) | 0o600;
    let whole = umask.is_some_and(|mask| mode & mask == 0);
    let made_mode = if whole { mode } else { 0o600 };
    let file = match dir.create_file(name, made_mode) {
        Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
            make_room(dir, name, entry)?;
            dir.create_file(name, made_mode)
        }
        made => made,
    };
    let file = file.map_err(|e| ArchiveError::stage(&dir.join(name), e))?;
    Ok((file, (!whole).then_some(mode)))
}

/// Makes room for `name` in `dir`: a later entry of the same name replaces an earlier file or
/// link, as tar does; never a directory.
pub(super) fn make_room(dir: &DirHandle, name: &OsStr, entry: &str) -> Result<(), ArchiveError> {
    match dir.stat(name).map_err(|e| ArchiveError::stage(&dir.join(name), e))? {
        None => Ok(()),
        Some(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            Err(ArchiveError::hostile(entry, rules::OVER_A_DIRECTORY))
        }
        Some(_) => dir
            .remove_file(name)
            .map_err(|e| ArchiveError::stage(&dir.join(name), e)),
    }
}

/// An entry that would be written through a link or over a file.
pub(super) fn through_link(entry: &str, e: io::Error) -> ArchiveError {
    match e.raw_os_error() {
        Some(libc::ELOOP | libc::ENOTDIR | libc::EEXIST) => ArchiveError::hostile(entry, rules::THROUGH_A_LINK),
        _ => ArchiveError::io(format!("cannot stage {entry}"), e),
    }
}
