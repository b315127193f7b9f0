//! A bounded pipe between two pipeline threads: chunks of bytes through a channel of fixed depth,
//! with the buffers handed back for reuse (no allocation per chunk). Memory in flight is at most
//! `depth + 2` chunks. The reader sees a clean end only when the writer called
//! [`PipeWriter::finish`]; a writer that failed (dropped unfinished) gives the reader an error,
//! so a half-made stream can never pass for a whole one.

use std::io::{self, BufRead, Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use super::cause::PipeClosed;

enum Msg {
    Data(Vec<u8>),
    End,
}

pub struct PipeWriter {
    /// Always `chunk` long (so a reader can fill it in place); `buf[..filled]` is the data.
    buf: Vec<u8>,
    filled: usize,
    chunk: usize,
    data: SyncSender<Msg>,
    free: Receiver<Vec<u8>>,
}

pub struct PipeReader {
    buf: Vec<u8>,
    pos: usize,
    data: Receiver<Msg>,
    free: SyncSender<Vec<u8>>,
    ended: bool,
}

pub fn pipe(chunk: usize, depth: usize) -> (PipeWriter, PipeReader) {
    let (data_tx, data_rx) = sync_channel(depth);
    let (free_tx, free_rx) = sync_channel(depth + 2);
    let w = PipeWriter {
        buf: vec![0; chunk],
        filled: 0,
        chunk,
        data: data_tx,
        free: free_rx,
    };
    let r = PipeReader {
        buf: Vec::new(),
        pos: 0,
        data: data_rx,
        free: free_tx,
        ended: false,
    };
    (w, r)
}

fn closed() -> io::Error {
    PipeClosed::Downstream.error()
}

impl PipeWriter {
    fn send(&mut self) -> io::Result<()> {
        let mut next = self.free.try_recv().unwrap_or_default();
        next.resize(self.chunk, 0);
        let mut full = std::mem::replace(&mut self.buf, next);
        full.truncate(self.filled);
        self.filled = 0;
        self.data.send(Msg::Data(full)).map_err(|_| closed())
    }

    /// Room to fill in place (sending the chunk first if it is full); say how much with `commit`.
    pub fn spare(&mut self) -> io::Result<&mut [u8]> {
        if self.filled == self.chunk {
            self.send()?;
        }
        Ok(&mut self.buf[self.filled..])
    }

    pub fn commit(&mut self, n: usize) {
        self.filled = (self.filled + n).min(self.chunk);
    }

    /// Sends what is buffered and marks a clean end of stream.
    pub fn finish(mut self) -> io::Result<()> {
        if self.filled > 0 {
            self.send()?;
        }
        self.data.send(Msg::End).map_err(|_| closed())
    }
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let space = self.spare()?;
        let n = space.len().min(data.len());
        space[..n].copy_from_slice(&data[..n]);
        self.commit(n);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl BufRead for PipeReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.buf.len() {
            if self.ended {
                return Ok(&[]);
            }
            match self.data.recv() {
                Ok(Msg::Data(next)) => {
                    let used = std::mem::replace(&mut self.buf, next);
                    self.pos = 0;
                    let _ = self.free.try_send(used);
                }
                Ok(Msg::End) => self.ended = true,
                Err(_) => return Err(PipeClosed::Upstream.error()),
            }
        }
        Ok(&self.buf[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
    }
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let available = self.fill_buf()?;
        let n = out.len().min(available.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_everything_in_order() {
        let (mut w, mut r) = pipe(7, 2);
        let t = std::thread::spawn(move || {
            for i in 0..1000u32 {
                w.write_all(&i.to_le_bytes()).unwrap();
            }
            w.finish().unwrap();
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        t.join().unwrap();
        let want: Vec<u8> = (0..1000u32).flat_map(|i| i.to_le_bytes()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_writer_that_fails_is_not_a_clean_end() {
        let (mut w, mut r) = pipe(4, 2);
        let t = std::thread::spawn(move || {
            w.write_all(b"partial data").unwrap();
            drop(w);
        });
        let mut got = Vec::new();
        let e = r.read_to_end(&mut got).unwrap_err();
        assert_eq!(
            crate::archive::cause::find::<PipeClosed>(&e),
            Some(&PipeClosed::Upstream)
        );
        t.join().unwrap();
    }
}
