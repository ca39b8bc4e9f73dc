//! The national list of division codes in CSV (`code,name,…` with a header, as the public
//! list's `villages.csv` or a province's subset of it): what `cuntong regions import` loads
//! into central's store and what `cuntong-sim fleet --codes` starts terminals for.

use std::io::Read;
use std::path::Path;

use cuntong_core::site::{Level, Region, SiteCode, SiteCodeError};

/// What a division list holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Divisions {
    /// (code, name) of every row, in the file's order.
    pub rows: Vec<(SiteCode, String)>,
    /// Rows whose code has a zero group above a set one (东莞, 中山 and 儋州 have townships but
    /// no counties): official, but not addressable as site codes, so left out.
    pub unaddressable: usize,
}

impl Divisions {
    /// The village codes of `region` in the list, in code order, each once: the terminals a
    /// simulated fleet of the region runs.
    pub fn villages(&self, region: &Region) -> Vec<SiteCode> {
        let mut sites: Vec<SiteCode> = self
            .rows
            .iter()
            .map(|(code, _)| *code)
            .filter(|c| c.level() == Level::Village && region.contains(c))
            .collect();
        sites.sort();
        sites.dedup();
        sites
    }
}

/// The K-th of N equal parts of a list (`--part K/N`, 1 ≤ K ≤ N): how a region's villages are
/// shared out among simulator processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    k: usize,
    n: usize,
}

/// A `--part` that is not K/N with 1 ≤ K ≤ N (the value as given).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not K/N with 1 <= K <= N")]
pub struct PartError(String);

impl std::str::FromStr for Part {
    type Err = PartError;

    fn from_str(s: &str) -> Result<Part, PartError> {
        let parsed = s
            .split_once('/')
            .and_then(|(k, n)| Some((k.parse().ok()?, n.parse().ok()?)));
        match parsed {
            Some((k, n)) if (1..=n).contains(&k) => Ok(Part { k, n }),
            _ => Err(PartError(s.to_owned())),
        }
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

impl Part {
    /// Part `k` of `n`; `None` unless 1 ≤ K ≤ N.
    pub fn new(k: usize, n: usize) -> Option<Part> {
        (1..=n).contains(&k).then_some(Part { k, n })
    }

    /// This part of `items`: the parts of a list cover it once, in order, sizes within one.
    pub fn of<T>(self, items: &[T]) -> &[T] {
        let len = items.len();
        &items[len * (self.k - 1) / self.n..len * self.k / self.n]
    }
}

/// Why a names file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Csv { path: String, source: csv::Error },
    #[error("{path} line {line}: {problem}")]
    Row {
        path: String,
        line: u64,
        problem: String,
    },
    #[error("{path}: the header has no `code` and `name` columns (found: {found})")]
    Header { path: String, found: String },
}

/// Reads a division list in CSV (`code,name,…` with a header, as the national list's
/// `villages.csv`): (code, name) of every row. Codes of any level are taken; a bad row is an
/// error naming its line, and nothing is taken from a file with one.
pub fn read(path: &Path) -> Result<Divisions, ImportError> {
    let shown = path.display().to_string();
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|source| ImportError::Io {
            path: shown.clone(),
            source,
        })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
        ImportError::Row {
            path: shown.clone(),
            line: line as u64,
            problem: "not UTF-8".into(),
        }
    })?;
    parse(&shown, text.trim_start_matches('\u{feff}'))
}

fn parse(path: &str, text: &str) -> Result<Divisions, ImportError> {
    let csv_err = |source| ImportError::Csv {
        path: path.to_owned(),
        source,
    };
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers = reader.headers().map_err(csv_err)?.clone();
    let column = |name: &str| headers.iter().position(|h| h.trim() == name);
    let (Some(code_at), Some(name_at)) = (column("code"), column("name")) else {
        return Err(ImportError::Header {
            path: path.to_owned(),
            found: headers.iter().collect::<Vec<_>>().join(","),
        });
    };
    let mut list = Divisions::default();
    for record in reader.records() {
        let record = record.map_err(csv_err)?;
        let line = record.position().map_or(0, |p| p.line());
        let bad = |problem: String| ImportError::Row {
            path: path.to_owned(),
            line,
            problem,
        };
        let code = record.get(code_at).unwrap_or("").trim();
        let name = record.get(name_at).unwrap_or("").trim();
        let site = match code.parse::<Region>() {
            Ok(region) => region.root(),
            // An official code with a zero group above a set one (the townships of the
            // prefectures without counties) has no place in the site hierarchy: skipped.
            Err(SiteCodeError::Gap { .. }) => {
                list.unaddressable += 1;
                continue;
            }
            Err(e) => return Err(bad(format!("code {code:?}: {e}"))),
        };
        if name.is_empty() {
            return Err(bad(format!("code {code}: the name is empty")));
        }
        if name.chars().any(char::is_control) {
            return Err(bad(format!("code {code}: the name has control characters")));
        }
        list.rows.push((site, name.to_owned()));
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parts_of_a_list_cover_it_once_in_order_and_bad_parts_are_refused() {
        for (len, n) in [(54_145, 11), (10, 3), (2, 5), (0, 2), (7, 1)] {
            let items: Vec<usize> = (0..len).collect();
            let parts: Vec<&[usize]> = (1..=n).map(|k| Part { k, n }.of(&items)).collect();
            assert_eq!(parts.concat(), items, "{len} in {n}");
            let sizes: Vec<usize> = parts.iter().map(|p| p.len()).collect();
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(hi - lo <= 1, "{sizes:?}");
        }
        assert_eq!("2/4".parse(), Ok(Part { k: 2, n: 4 }));
        assert_eq!(Part::new(2, 4), Some(Part { k: 2, n: 4 }));
        assert_eq!(Part { k: 2, n: 4 }.to_string(), "2/4");
        for bad in ["0/4", "5/4", "1/0", "1", "a/b", "1/2/3", ""] {
            assert!(bad.parse::<Part>().is_err(), "{bad:?}");
        }
        assert_eq!(Part::new(0, 4), None);
    }

    #[test]
    fn a_regions_villages_are_its_village_codes_in_order_each_once() {
        let list = parse(
            "v.csv",
            "code,name\n130102002001,乙\n130102000000,县\n130102001001,甲\n130102001001,甲\n130203001001,丙\n",
        )
        .unwrap();
        let region: Region = "1301".parse().unwrap();
        assert_eq!(
            list.villages(&region),
            [code("130102001001"), code("130102002001")]
        );
    }

    fn code(s: &str) -> SiteCode {
        s.parse::<Region>().unwrap().root()
    }

    #[test]
    fn quoted_names_are_read_and_a_bad_row_is_named_by_its_line() {
        let good = "code,name,streetCode\n130102001001,\"多福巷,社区\",130102001\n";
        let list = parse("v.csv", good).unwrap();
        assert_eq!(
            list.rows,
            vec![(code("130102001001"), "多福巷,社区".to_owned())]
        );
        let bad = "code,name\n130102001001,甲\n1301020010x1,乙\n";
        let e = parse("v.csv", bad).unwrap_err().to_string();
        assert!(e.starts_with("v.csv line 3: code \"1301020010x1\""), "{e}");
        let e = parse("v.csv", "id,label\n1,2\n").unwrap_err().to_string();
        assert!(e.contains("no `code` and `name` columns"), "{e}");
    }

    #[test]
    fn codes_without_a_county_are_counted_and_left_out() {
        let text = "code,name\n441900003001,\"东莞的村\"\n130102001001,甲\n";
        let list = parse("v.csv", text).unwrap();
        assert_eq!(list.rows, vec![(code("130102001001"), "甲".to_owned())]);
        assert_eq!(list.unaddressable, 1);
    }

    #[test]
    fn a_file_that_is_not_utf8_is_refused_naming_the_line() {
        let dir = std::env::temp_dir().join(format!("divisions-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.csv");
        std::fs::write(&path, b"code,name\n130102001001,\xff\n").unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.ends_with("line 2: not UTF-8"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
