//! Standard output for the binaries' results: [`print!`](crate::print) and
//! [`println!`](crate::println), which end the process the Unix way when the reader has gone
//! (`cuntong sites | head`: exit status 141, as if killed by SIGPIPE, and no message) instead
//! of panicking, and report any other write failure on stderr with exit status 1.
//! A binary opts in with `use cuntong_terminal::{print, println};`.

use std::io::Write;

/// The exit status of a process whose output pipe was closed (128 + SIGPIPE).
pub const BROKEN_PIPE_STATUS: i32 = 141;

/// Writes `args` to standard output, or ends the process if it cannot.
pub fn write(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        failed(e);
    }
}

/// Writes `items` to standard output as one JSON array, or ends the process if it cannot (see
/// [`JsonArray`]).
pub fn json_array<T: serde::Serialize>(items: impl IntoIterator<Item = T>) {
    let mut out = JsonArray::start();
    for item in items {
        out.push(&item);
    }
    out.end();
}

/// A JSON array written to standard output an item at a time, one item to a line (a
/// province's 54,145 sites are never all held, as rows or as JSON, and `grep` and `head` see
/// one item a line). Any write failure ends the process as [`write`] does. An array not
/// [`end`](JsonArray::end)ed (its source failed half-way) is left unclosed: no reader takes
/// it for the whole.
#[derive(Debug)]
pub struct JsonArray {
    out: std::io::BufWriter<std::io::StdoutLock<'static>>,
    items: u64,
}

impl JsonArray {
    pub fn start() -> JsonArray {
        let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
        if let Err(e) = out.write_all(b"[") {
            failed(e);
        }
        JsonArray { out, items: 0 }
    }

    pub fn push<T: serde::Serialize>(&mut self, item: &T) {
        let separator: &[u8] = if self.items == 0 { b"\n" } else { b",\n" };
        self.items += 1;
        let written = self
            .out
            .write_all(separator)
            .and_then(|()| serde_json::to_writer(&mut self.out, item).map_err(Into::into));
        if let Err(e) = written {
            failed(e);
        }
    }

    /// Closes the array and flushes it.
    pub fn end(mut self) {
        let close: &[u8] = if self.items == 0 { b"]\n" } else { b"\n]\n" };
        if let Err(e) = self.out.write_all(close).and_then(|()| self.out.flush()) {
            failed(e);
        }
    }
}

impl Drop for JsonArray {
    /// What was written reaches the reader even when the array is left unclosed.
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}

fn failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(BROKEN_PIPE_STATUS);
    }
    eprintln!("error: cannot write the output: {e}");
    std::process::exit(1);
}

/// `print!` to standard output, ending the process if the reader has gone.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::stdout::write(format_args!($($arg)*))
    };
}

/// `println!` to standard output, ending the process if the reader has gone.
#[macro_export]
macro_rules! println {
    () => {
        $crate::stdout::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::stdout::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}
