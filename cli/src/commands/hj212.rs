//! `cuntong hj212 decode|encode`: HJ 212 frames for technicians at a data logger. The frame
//! tools are [`crate::hj212`].

use std::path::PathBuf;

use clap::Subcommand;
use cuntong_terminal::{print, println};

use super::common::{Failure, Usage, fail};
use crate::hj212::{FrameJson, decode_line, describe};

#[derive(Debug, Subcommand)]
pub enum Hj212Action {
    /// Decode frames, one per line, from FILE or standard input (`-`); exit 1 if any is bad.
    Decode {
        #[arg(default_value = "-")]
        file: String,
        /// One JSON object per frame.
        #[arg(long)]
        json: bool,
    },
    /// Encode frames from a JSON file (an object or an array of objects, as `decode --json`
    /// prints them), computing the length and CRC.
    Encode {
        #[arg(long)]
        json: PathBuf,
    },
}

pub fn run(action: Hj212Action) -> Result<(), Failure> {
    match action {
        Hj212Action::Decode { file, json } => decode(&file, json),
        Hj212Action::Encode { json } => encode(&json),
    }
}

fn decode(file: &str, json: bool) -> Result<(), Failure> {
    let bytes = if file == "-" {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b).map_err(fail)?;
        b
    } else {
        std::fs::read(file).map_err(|e| Usage(format!("{file}: {e}")))?
    };
    let mut bad = 0;
    // Line by line, as bytes: one bad line (not UTF-8, say) is reported by its number and the
    // others still decode.
    for (i, line) in bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
    {
        match decode_line(line) {
            Ok(p) if json => {
                println!(
                    "{}",
                    serde_json::to_string(&FrameJson::from(&p)).map_err(fail)?
                )
            }
            Ok(p) => println!("frame {}:\n{}", i + 1, describe(&p)),
            Err(e) => {
                bad += 1;
                eprintln!("error: line {}: {e}", i + 1);
            }
        }
    }
    if bad > 0 {
        return Err(Failure::Runtime(format!("{bad} bad frame(s)")));
    }
    Ok(())
}

fn encode(json: &std::path::Path) -> Result<(), Failure> {
    let text = std::fs::read_to_string(json)
        .map_err(|e| Usage(format!("--json {}: {e}", json.display())))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Usage(format!("--json {}: {e}", json.display())))?;
    let items = match value {
        serde_json::Value::Array(a) => a,
        one => vec![one],
    };
    // Every frame checked before any is written.
    let mut out = String::new();
    for (i, item) in items.into_iter().enumerate() {
        let bad = |e: String| Usage(format!("--json {} frame {}: {e}", json.display(), i + 1));
        let frame: FrameJson = serde_json::from_value(item).map_err(|e| bad(e.to_string()))?;
        let packet = frame.to_packet().map_err(|e| bad(e.to_string()))?;
        // Refusing what the decoder would not read back as the same packet, or the standard
        // does not allow.
        let frame = cuntong_core::hj212::try_encode(&packet).map_err(|e| bad(e.to_string()))?;
        out.push_str(&String::from_utf8_lossy(&frame));
    }
    print!("{out}");
    Ok(())
}
