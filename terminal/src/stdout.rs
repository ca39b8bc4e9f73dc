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

/// Writes `items` to standard output as one indented JSON array, each item serialised as it
/// comes (a province's 54,145 sites are never all held as JSON at once), or ends the process
/// if it cannot.
pub fn json_array<T: serde::Serialize>(items: impl IntoIterator<Item = T>) {
    use serde::Serializer as _;
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let written = serde_json::Serializer::pretty(&mut out)
        .collect_seq(items)
        .map_err(std::io::Error::from)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(e) = written {
        failed(e);
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
