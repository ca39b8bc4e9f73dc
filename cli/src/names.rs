//! Official names of division codes: `130102` is 长安区, and its path is
//! `河北省 石家庄市 长安区`. Every table, JSON document and page a person reads shows names
//! beside the codes through [`Names`].
//!
//! Province to township names (about 45,000) ship with cuntong in `cli/data/divisions.tsv`,
//! generated from the national statistical division list by `scripts/divisions.sh`; village
//! names (620,000 in the country, 54,145 in Hebei) are loaded into the store with
//! `cuntong regions import villages.csv`; a terminal provisioned with `--name` is shown by that
//! name. A code that is on none of these lists still works everywhere and reads
//! [`UNNAMED`].

use std::collections::HashMap;
use std::sync::LazyLock;

use cuntong_core::alarm::Subject;
use cuntong_core::site::{Level, Region, SiteCode};
use cuntong_core::terminal_id::TerminalId;
use serde::{Deserialize, Serialize};

/// What a code without an official name reads.
pub const UNNAMED: &str = "(unnamed)";

/// The shipped list, `code<TAB>name` per line, `#` comments.
const SHIPPED: &str = include_str!("../data/divisions.tsv");

static BUILTIN: LazyLock<HashMap<u64, &'static str>> = LazyLock::new(|| {
    SHIPPED
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (code, name) = l.split_once('\t')?;
            Some((code.parse::<Region>().ok()?.root().as_u64(), name))
        })
        .collect()
});

/// Names of codes and terminals.
#[derive(Clone, Debug, Default)]
pub struct Names {
    /// Names loaded into the store (villages, mostly), by code.
    imported: HashMap<u64, String>,
    /// Names given to terminals at provisioning, by terminal id.
    labels: HashMap<String, String>,
}

/// One code with its name, for `regions show|search` and `--json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Division {
    pub code: String,
    pub level: String,
    pub name: String,
    /// The names from the province down to this one, space-separated.
    pub path: String,
}

impl Names {
    /// The shipped names only (no store).
    pub fn shipped() -> Names {
        Names::default()
    }

    /// The shipped names plus what was imported into the store and the terminals' names.
    pub fn new(imported: HashMap<u64, String>, labels: HashMap<String, String>) -> Names {
        Names { imported, labels }
    }

    /// The official name of `code`, if it has one.
    pub fn lookup(&self, code: &SiteCode) -> Option<&str> {
        let n = code.as_u64();
        self.imported
            .get(&n)
            .map(String::as_str)
            .or_else(|| BUILTIN.get(&n).copied())
    }

    /// The name of `code`, or [`UNNAMED`].
    pub fn name(&self, code: &SiteCode) -> &str {
        self.lookup(code).unwrap_or(UNNAMED)
    }

    /// The names from the province down to `code`: `河北省 石家庄市 长安区`.
    pub fn path(&self, code: &SiteCode) -> String {
        let mut chain: Vec<SiteCode> = code.ancestors().collect();
        chain.reverse();
        chain.push(*code);
        chain
            .iter()
            .map(|c| self.name(c))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A terminal's name: the one it was provisioned with, else its site's.
    pub fn terminal(&self, id: &TerminalId) -> &str {
        self.labels
            .get(&id.to_string())
            .map(String::as_str)
            .unwrap_or_else(|| self.name(id.site()))
    }

    /// The same for a terminal id as stored (text); an id that does not parse is unnamed.
    pub fn terminal_str(&self, id: &str) -> &str {
        if let Some(l) = self.labels.get(id) {
            return l;
        }
        id.parse::<TerminalId>()
            .map(|t| self.name(t.site()))
            .unwrap_or(UNNAMED)
    }

    /// The path of a site code as stored (text); an unparsable code is unnamed.
    pub fn path_str(&self, code: &str) -> String {
        code.parse::<Region>()
            .map(|r| self.path(&r.root()))
            .unwrap_or_else(|_| UNNAMED.to_owned())
    }

    /// The name of an alarm's subject: a terminal's, or a region's.
    pub fn subject(&self, subject: &Subject) -> &str {
        match subject {
            Subject::Terminal(t) => self.terminal(t),
            Subject::Region(code) => self.name(code),
        }
    }

    /// The path of an alarm's subject (a terminal's site's, or the region's).
    pub fn subject_path(&self, subject: &Subject) -> String {
        match subject {
            Subject::Terminal(t) => self.path(t.site()),
            Subject::Region(code) => self.path(code),
        }
    }

    /// `code` with its level, name and path.
    pub fn division(&self, code: &SiteCode) -> Division {
        Division {
            code: Region::of(*code).prefix(),
            level: code.level().to_string(),
            name: self.name(code).to_owned(),
            path: self.path(code),
        }
    }

    /// Codes whose name contains `text` (or whose code starts with it), province first, at
    /// most `limit`.
    pub fn search(&self, text: &str, limit: usize) -> Vec<Division> {
        let text = text.trim();
        let mut found: Vec<u64> = BUILTIN
            .iter()
            .map(|(c, n)| (*c, *n))
            .chain(self.imported.iter().map(|(c, n)| (*c, n.as_str())))
            .filter(|(c, n)| n.contains(text) || code_text(*c).starts_with(text))
            .map(|(c, _)| c)
            .collect();
        found.sort_by_key(|c| (level_of(*c), *c));
        found.dedup();
        found
            .into_iter()
            .filter_map(|c| code_text(c).parse::<Region>().ok())
            .take(limit)
            .map(|r| self.division(&r.root()))
            .collect()
    }
}

fn code_text(code: u64) -> String {
    let s = format!("{code:012}");
    match s.parse::<Region>() {
        Ok(r) => r.prefix(),
        Err(_) => s,
    }
}

fn level_of(code: u64) -> usize {
    format!("{code:012}")
        .parse::<Region>()
        .map(|r| r.root().level().depth())
        .unwrap_or(Level::ALL.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(s: &str) -> SiteCode {
        s.parse::<Region>().unwrap().root()
    }

    #[test]
    fn a_township_has_its_official_name_and_path() {
        let n = Names::shipped();
        assert_eq!(n.name(&code("13")), "河北省");
        assert_eq!(n.name(&code("130102")), "长安区");
        assert_eq!(
            n.path(&code("130102001")),
            "河北省 石家庄市 长安区 建北街道"
        );
    }

    #[test]
    fn a_code_not_on_the_list_is_unnamed_and_keeps_its_listed_ancestors() {
        let n = Names::shipped();
        assert_eq!(n.name(&code("130102999")), UNNAMED);
        assert_eq!(
            n.path(&code("130102999")),
            "河北省 石家庄市 长安区 (unnamed)"
        );
        assert_eq!(n.lookup(&code("99")), None);
    }

    #[test]
    fn imported_names_and_provisioned_labels_take_precedence() {
        let mut imported = HashMap::new();
        imported.insert(code("130102001001").as_u64(), "多福社区".to_owned());
        let mut labels = HashMap::new();
        labels.insert("130102001002-main".to_owned(), "县政府会议室".to_owned());
        let n = Names::new(imported, labels);
        let village: TerminalId = "130102001001-main".parse().unwrap();
        let labelled: TerminalId = "130102001002-main".parse().unwrap();
        assert_eq!(n.terminal(&village), "多福社区");
        assert_eq!(n.terminal(&labelled), "县政府会议室");
        assert_eq!(n.terminal_str("not an id"), UNNAMED);
    }

    #[test]
    fn search_finds_a_township_by_part_of_its_name_and_by_code_prefix() {
        let n = Names::shipped();
        let found = n.search("建北", 50);
        assert!(
            found
                .iter()
                .any(|d| d.code == "130102001" && d.level == "township"),
            "{found:?}"
        );
        let by_code = n.search("130102", 5);
        assert_eq!(by_code[0].code, "130102");
        assert_eq!(by_code[0].path, "河北省 石家庄市 长安区");
    }

    /// The list's 2,978 counties and 41,352 townships include the townships of the three
    /// prefectures without counties (东莞, 中山, 儋州: county group 00) and a few all-zero
    /// groups; site codes with such a gap are not addressable, so those rows are not used.
    #[test]
    fn the_shipped_list_covers_every_province_down_to_townships() {
        let by_level = BUILTIN.keys().fold([0usize; 5], |mut acc, c| {
            acc[level_of(*c)] += 1;
            acc
        });
        assert_eq!(by_level, [31, 342, 2975, 41274, 0]);
    }
}
