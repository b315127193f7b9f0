//! The create side's hand-over from the tar builder to the stage that compresses and encrypts:
//! the tar stream in chunks, each tagged with the gzip level it goes through. Deflate runs on the
//! second thread, beside encryption, instead of on the walking one: on a media store of small
//! files the walk (syscalls, tar headers, SHA-256) and deflate are each about half the work.
//!
//! Like [`super::pipe`]: bounded (`depth` chunks in flight, buffers handed back for reuse), and
//! the reader sees a clean end only when the writer called [`SegmentWriter::finish`].

use std::io::{self, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use super::cause::PipeClosed;
use super::compress::{AdaptiveGz, Level};

struct Segment {
    level: Level,
    bytes: Vec<u8>,
}

enum Msg {
    Data(Segment),
    End,
}

pub struct SegmentWriter {
    /// `buf.len() <= chunk`, its capacity `chunk`: never reallocated, never zeroed
    buf: Vec<u8>,
    level: Level,
    chunk: usize,
    data: SyncSender<Msg>,
    free: Receiver<Vec<u8>>,
}

pub struct SegmentReader {
    data: Receiver<Msg>,
    free: SyncSender<Vec<u8>>,
}

pub fn segments(level: Level, chunk: usize, depth: usize) -> (SegmentWriter, SegmentReader) {
    let (data_tx, data_rx) = sync_channel(depth);
    let (free_tx, free_rx) = sync_channel(depth + 2);
    let w = SegmentWriter {
        buf: Vec::with_capacity(chunk),
        level,
        chunk,
        data: data_tx,
        free: free_rx,
    };
    (
        w,
        SegmentReader {
            data: data_rx,
            free: free_tx,
        },
    )
}

impl SegmentWriter {
    /// What is written from now on goes through `level`.
    pub fn set_level(&mut self, level: Level) -> io::Result<()> {
        if level != self.level {
            self.send()?;
            self.level = level;
        }
        Ok(())
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut next = self.free.try_recv().unwrap_or_else(|_| Vec::with_capacity(self.chunk));
        next.clear();
        let bytes = std::mem::replace(&mut self.buf, next);
        let segment = Segment {
            level: self.level,
            bytes,
        };
        self.data
            .send(Msg::Data(segment))
            .map_err(|_| PipeClosed::Downstream.error())
    }

    /// Sends what is buffered and marks a clean end of stream.
    pub fn finish(mut self) -> io::Result<()> {
        self.send()?;
        self.data.send(Msg::End).map_err(|_| PipeClosed::Downstream.error())
    }
}

impl Write for SegmentWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() >= self.chunk {
            self.send()?;
        }
        let n = (self.chunk - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl SegmentReader {
    /// Writes every segment into `gz` at its level, to the writer's clean end.
    pub fn drain_into<W: Write>(self, gz: &mut AdaptiveGz<W>) -> io::Result<()> {
        loop {
            match self.data.recv() {
                Ok(Msg::Data(segment)) => {
                    gz.set_level(segment.level)?;
                    gz.write_all(&segment.bytes)?;
                    let _ = self.free.try_send(segment.bytes);
                }
                Ok(Msg::End) => return Ok(()),
                Err(_) => return Err(PipeClosed::Upstream.error()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::MultiGzDecoder;
    use std::io::Read;

    #[test]
    fn carries_everything_in_order_at_its_level() {
        let (mut w, r) = segments(Level::Small, 7, 2);
        let t = std::thread::spawn(move || {
            for i in 0..1000u32 {
                let level = [Level::Small, Level::Store, Level::Fast][(i / 100 % 3) as usize];
                w.set_level(level).unwrap();
                w.write_all(&i.to_le_bytes()).unwrap();
            }
            w.finish().unwrap();
        });
        let mut gz = AdaptiveGz::new(Vec::new(), Level::Small).unwrap();
        r.drain_into(&mut gz).unwrap();
        t.join().unwrap();
        let mut got = Vec::new();
        MultiGzDecoder::new(&gz.finish().unwrap()[..])
            .read_to_end(&mut got)
            .unwrap();
        let want: Vec<u8> = (0..1000u32).flat_map(|i| i.to_le_bytes()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_writer_that_fails_is_not_a_clean_end() {
        let (mut w, r) = segments(Level::Small, 4, 2);
        let t = std::thread::spawn(move || {
            w.write_all(b"partial data").unwrap();
            drop(w);
        });
        let mut gz = AdaptiveGz::new(Vec::new(), Level::Small).unwrap();
        let e = r.drain_into(&mut gz).unwrap_err();
        assert_eq!(
            crate::archive::cause::find::<PipeClosed>(&e),
            Some(&PipeClosed::Upstream)
        );
        t.join().unwrap();
    }
}
