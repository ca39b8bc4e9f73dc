//! The alarm rules file of `cuntong central --alarms`: thresholds, staleness, the offline
//! grace, relay uplinks and hooks, each problem named by its key.

use std::path::Path;

use cuntong_core::alarm::{AlarmRules, Severity, StaleRule, ThresholdRule, Uplink};
use cuntong_core::site::{Region, SiteCodeError};
use cuntong_core::telemetry::{Metric, MetricError};
use cuntong_core::terminal_id::{TerminalId, TerminalIdError};
use serde::Deserialize;

use super::Hook;

/// A rules file and its hooks.
#[derive(Clone, Debug, Default)]
pub struct AlarmConfig {
    pub rules: AlarmRules,
    /// Told of every alarm change.
    pub hooks: Vec<Hook>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRules {
    dropping: Option<bool>,
    #[serde(default)]
    offline: RawOffline,
    #[serde(default)]
    threshold: Vec<RawThreshold>,
    #[serde(default)]
    media: Vec<RawThreshold>,
    #[serde(default)]
    stale: Vec<RawStale>,
    #[serde(default)]
    hook: Vec<RawHook>,
    #[serde(default)]
    uplink: Vec<RawUplink>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUplink {
    terminal: String,
    serves: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOffline {
    grace: Option<String>,
    severity: Option<String>,
    root_cause_min: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawThreshold {
    metric: String,
    above: Option<f64>,
    below: Option<f64>,
    clear: f64,
    #[serde(rename = "for")]
    for_: Option<String>,
    severity: Option<String>,
    region: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStale {
    metric: String,
    after: String,
    severity: Option<String>,
    region: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHook {
    command: Option<Vec<String>>,
    url: Option<String>,
}

/// Why a rules file was refused: each names the key (`threshold[0].clear: …`) and the value.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The file cannot be read.
    #[error("{0}")]
    Read(#[source] std::io::Error),
    /// Not TOML, or keys the rules do not have (the parser's words on one line).
    #[error("{}", source.to_string().replace('\n', " "))]
    Toml {
        #[from]
        source: toml::de::Error,
    },
    /// Not a duration (the parser's words).
    #[error("{key}: {problem}")]
    Duration {
        key: String,
        problem: cuntong_terminal::config::BadValue,
    },
    /// Not a severity.
    #[error("{key}: {value:?} is not one of info, warning, major, critical")]
    Severity { key: String, value: String },
    /// Not a metric name.
    #[error("{key}: {value:?}: {source}")]
    Metric {
        key: String,
        value: String,
        source: MetricError,
    },
    /// A rule's `region` is not a region code.
    #[error("{key}: {value:?}: {source}")]
    Region {
        key: String,
        value: String,
        source: SiteCodeError,
    },
    /// An uplink's `terminal` is not a terminal id.
    #[error("{key} {value:?}: {source}")]
    UplinkTerminal {
        key: String,
        value: String,
        source: TerminalIdError,
    },
    /// An uplink's `serves` is not a region code.
    #[error("{key} {value:?}: {source}")]
    UplinkServes {
        key: String,
        value: String,
        source: SiteCodeError,
    },
    /// `offline.root_cause_min` below 2.
    #[error("offline.root_cause_min: at least 2")]
    RootCauseMin,
    /// A threshold with both or neither of `above` and `below`.
    #[error("{key}: give either above or below")]
    AboveOrBelow { key: String },
    /// A threshold's `clear` beyond the limit that raises it.
    #[error("{key}: {clear} must be on the normal side of {raise}")]
    ClearSide { key: String, clear: f64, raise: f64 },
    /// A hook command without a program.
    #[error("hook[{index}].command: empty")]
    EmptyCommand { index: usize },
    /// A web hook whose URL is not http(s).
    #[error("hook[{index}].url: {url:?} is not an http(s) URL")]
    NotHttpUrl { index: usize, url: String },
    /// A hook with both or neither of `command` and `url`.
    #[error("hook[{index}]: one of command or url")]
    CommandOrUrl { index: usize },
}

/// A rules file that cannot be used: the file, and what is wrong in it.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct RulesFileError {
    pub path: std::path::PathBuf,
    #[source]
    pub problem: Box<RulesError>,
}

impl AlarmConfig {
    /// Reads a rules file; every problem names the file and the key
    /// (`alarms.toml: threshold[0].clear: …`).
    pub fn load(path: &Path) -> Result<AlarmConfig, RulesFileError> {
        let in_file = |problem| RulesFileError {
            path: path.to_owned(),
            problem: Box::new(problem),
        };
        let text = std::fs::read_to_string(path).map_err(|e| in_file(RulesError::Read(e)))?;
        AlarmConfig::parse(&text).map_err(in_file)
    }

    pub fn parse(text: &str) -> Result<AlarmConfig, RulesError> {
        let raw: RawRules = toml::from_str(text)?;
        let duration = |key: &str, v: &str| {
            cuntong_terminal::config::parse_duration(v)
                .map(|d| d.as_millis() as u64)
                .map_err(|problem| RulesError::Duration {
                    key: key.to_owned(),
                    problem,
                })
        };
        let severity = |key: &str, v: Option<String>, default: Severity| match v {
            None => Ok(default),
            Some(s) => Severity::parse(&s).ok_or_else(|| RulesError::Severity {
                key: key.to_owned(),
                value: s.clone(),
            }),
        };
        let metric = |key: &str, v: &str| {
            Metric::from_name(v).map_err(|source| RulesError::Metric {
                key: key.to_owned(),
                value: v.to_owned(),
                source,
            })
        };
        let region = |key: &str, v: Option<String>| {
            v.map(|r| {
                r.parse::<Region>().map_err(|source| RulesError::Region {
                    key: key.to_owned(),
                    value: r.clone(),
                    source,
                })
            })
            .transpose()
        };
        let mut rules = AlarmRules::default();
        if let Some(d) = raw.dropping {
            rules.dropping = d;
        }
        if let Some(g) = raw.offline.grace {
            rules.offline_grace_ms = duration("offline.grace", &g)?;
        }
        rules.offline_severity =
            severity("offline.severity", raw.offline.severity, Severity::Major)?;
        if let Some(n) = raw.offline.root_cause_min {
            if n < 2 {
                return Err(RulesError::RootCauseMin);
            }
            rules.root_cause_min = n;
        }
        // Rules given for media during meetings replace the built-in ones.
        if !raw.media.is_empty() {
            rules.thresholds.retain(|r| !r.during_meeting);
        }
        let sections = [
            ("threshold", false, raw.threshold),
            ("media", true, raw.media),
        ];
        for (section, during_meeting, list) in sections {
            for (i, t) in list.into_iter().enumerate() {
                let key = |f: &str| format!("{section}[{i}].{f}");
                let (above, raise) = match (t.above, t.below) {
                    (Some(a), None) => (true, a),
                    (None, Some(b)) => (false, b),
                    _ => return Err(RulesError::AboveOrBelow { key: key("above") }),
                };
                if (above && t.clear > raise) || (!above && t.clear < raise) {
                    return Err(RulesError::ClearSide {
                        key: key("clear"),
                        clear: t.clear,
                        raise,
                    });
                }
                rules.thresholds.push(ThresholdRule {
                    metric: metric(&key("metric"), &t.metric)?,
                    region: region(&key("region"), t.region)?,
                    above,
                    raise,
                    clear: t.clear,
                    min_duration_ms: match t.for_ {
                        Some(d) => duration(&key("for"), &d)?,
                        None => 0,
                    },
                    severity: severity(&key("severity"), t.severity, Severity::Major)?,
                    during_meeting,
                });
            }
        }
        for (i, u) in raw.uplink.into_iter().enumerate() {
            let key = |f: &str| format!("uplink[{i}].{f}");
            let terminal: TerminalId =
                u.terminal
                    .parse()
                    .map_err(|source| RulesError::UplinkTerminal {
                        key: key("terminal"),
                        value: u.terminal.clone(),
                        source,
                    })?;
            let serves: Region = u
                .serves
                .parse()
                .map_err(|source| RulesError::UplinkServes {
                    key: key("serves"),
                    value: u.serves.clone(),
                    source,
                })?;
            rules.uplinks.push(Uplink { terminal, serves });
        }
        for (i, s) in raw.stale.into_iter().enumerate() {
            let key = |f: &str| format!("stale[{i}].{f}");
            rules.stale.push(StaleRule {
                metric: metric(&key("metric"), &s.metric)?,
                region: region(&key("region"), s.region)?,
                after_ms: duration(&key("after"), &s.after)?,
                severity: severity(&key("severity"), s.severity, Severity::Warning)?,
            });
        }
        let mut hooks = Vec::new();
        for (index, h) in raw.hook.into_iter().enumerate() {
            hooks.push(match (h.command, h.url) {
                (Some(c), None) if c.is_empty() => {
                    return Err(RulesError::EmptyCommand { index });
                }
                (Some(c), None) => Hook::Command(c),
                (None, Some(url)) => {
                    let lower = url.to_ascii_lowercase();
                    if !(lower.starts_with("http://") || lower.starts_with("https://"))
                        || url.contains(char::is_whitespace)
                    {
                        return Err(RulesError::NotHttpUrl { index, url });
                    }
                    Hook::Webhook(url)
                }
                _ => return Err(RulesError::CommandOrUrl { index }),
            });
        }
        Ok(AlarmConfig { rules, hooks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_rules_parse() {
        let text = cuntong_terminal::config::documented_example(include_str!("mod.rs")).unwrap();
        let cfg = AlarmConfig::parse(&text).unwrap();
        assert_eq!(cfg.rules.offline_grace_ms, 120_000);
        let [temp, media] = &cfg.rules.thresholds[..] else {
            panic!("{:?}", cfg.rules.thresholds);
        };
        assert_eq!((temp.raise, temp.min_duration_ms), (35.0, 300_000));
        assert!(!temp.during_meeting);
        assert_eq!((media.metric.name(), media.raise), ("media.loss", 8.0));
        assert!(media.during_meeting);
        assert_eq!(
            AlarmConfig::parse("").unwrap().rules.thresholds,
            ThresholdRule::media_defaults()
        );
        assert_eq!(cfg.rules.stale[0].after_ms, 900_000);
        assert_eq!(
            cfg.hooks[0],
            Hook::Command(vec![
                "/usr/local/bin/duty-sms".into(),
                "--office".into(),
                "130102".into()
            ])
        );
        assert_eq!(cfg.hooks[1].name(), "https://chat.example.gov.cn");
        assert_eq!(
            cfg.rules.uplinks[0].terminal.to_string(),
            "130102000000-relay"
        );
        assert_eq!(cfg.rules.uplinks[0].serves.prefix(), "130102");
    }

    #[test]
    fn bad_rules_name_the_key() {
        let err = |t: &str| AlarmConfig::parse(t).unwrap_err().to_string();
        assert!(err("[offline]\ngrace = \"soon\"\n").contains("offline.grace"));
        assert!(
            err("[[threshold]]\nmetric = \"env.temp\"\nabove = 30.0\nclear = 31.0\n")
                .contains("threshold[0].clear")
        );
        assert!(
            err("[[threshold]]\nmetric = \"env.temp\"\nclear = 31.0\n").contains("above or below")
        );
        assert!(
            err("[[stale]]\nmetric = \"no such\"\nafter = \"1m\"\n").contains("stale[0].metric")
        );
        assert!(
            err("[[threshold]]\nmetric = \"env.temp\"\nabove = 3.0\nclear = 1.0\nseverity = \"dire\"\n")
                .contains("threshold[0].severity")
        );
        assert!(err("colour = 1\n").contains("unknown field"));
        assert!(err("[[hook]]\nurl = \"ftp://x\"\n").contains("hook[0].url"));
        assert!(err("[[hook]]\n").contains("hook[0]: one of command or url"));
        assert!(
            err("[[uplink]]\nterminal = \"x\"\nserves = \"13\"\n").contains("uplink[0].terminal")
        );
    }
}
