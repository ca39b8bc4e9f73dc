//! The codes of the standard: commands (CN), system types (ST), flag bits, and the pollutant
//! factors of 2005 and 2017 with the metrics they are stored as.

use alloc::borrow::ToOwned;

use crate::telemetry::Metric;

/// Command codes (CN). Field unit = data logger (现场机); host = platform (上位机).
pub mod cn {
    /// 设置超时时间及重发次数: set timeout and retries.
    pub const SET_TIMEOUT: &str = "1000";
    /// 提取/上传现场机时间: get or upload the field unit's time.
    pub const GET_TIME: &str = "1011";
    /// 设置现场机时间: set the field unit's time.
    pub const SET_TIME: &str = "1012";
    /// 现场机时间校准请求: the field unit asks for a time sync.
    pub const TIME_SYNC_REQUEST: &str = "1013";
    /// 提取/上传实时数据间隔.
    pub const GET_RTD_INTERVAL: &str = "1061";
    /// 设置实时数据间隔.
    pub const SET_RTD_INTERVAL: &str = "1062";
    /// 提取/上传分钟数据间隔.
    pub const GET_MIN_INTERVAL: &str = "1063";
    /// 设置分钟数据间隔.
    pub const SET_MIN_INTERVAL: &str = "1064";
    /// 设置现场机密码.
    pub const SET_PASSWORD: &str = "1072";
    /// Real-time data (`-Rtd`), upload or request.
    pub const REALTIME: &str = "2011";
    /// Stop real-time uploads.
    pub const STOP_REALTIME: &str = "2012";
    /// Treatment-equipment running status (`SBxxx-RS`).
    pub const RUN_STATUS: &str = "2021";
    /// Stop running-status uploads.
    pub const STOP_RUN_STATUS: &str = "2022";
    /// Daily data.
    pub const DAILY: &str = "2031";
    /// Daily equipment running time (`SBxxx-RT`).
    pub const DAILY_RUN_TIME: &str = "2041";
    /// Minute data (`-Min/-Avg/-Max/-Cou`).
    pub const MINUTE: &str = "2051";
    /// Hourly data.
    pub const HOURLY: &str = "2061";
    /// Data-logger power-on time (`RestartTime`).
    pub const RESTART_TIME: &str = "2081";
    /// 请求应答 (`QnRtn`): answers a host request.
    pub const REQUEST_ANSWER: &str = "9011";
    /// 执行结果 (`ExeRtn`).
    pub const EXECUTION_RESULT: &str = "9012";
    /// 通知应答: answers a notification.
    pub const NOTIFICATION_ANSWER: &str = "9013";
    /// 数据应答: answers a data upload.
    pub const DATA_ACK: &str = "9014";

    /// Whether `cn` is one of the data uploads (real-time, minute, hourly, daily).
    pub fn is_data_upload(cn: &str) -> bool {
        matches!(cn, REALTIME | MINUTE | HOURLY | DAILY)
    }
}

/// System codes (ST).
pub mod st {
    /// 地表水质量监测 surface-water quality.
    pub const SURFACE_WATER: &str = "21";
    /// 空气质量监测 ambient air quality.
    pub const AIR_QUALITY: &str = "22";
    /// 大气环境污染源 air pollution source (flue gas).
    pub const AIR_SOURCE: &str = "31";
    /// 地表水体环境污染源 water pollution source (wastewater).
    pub const WATER_SOURCE: &str = "32";
    /// 系统交互 system interaction: every answer.
    pub const INTERACTION: &str = "91";
}

/// Flag bits.
pub mod flag {
    /// A: the command needs an answer.
    pub const ACK: u8 = 1;
    /// D: the packet is split and carries PNUM and PNO.
    pub const SPLIT: u8 = 2;
}

/// HJ/T 212-2005 factor codes with the 2017 code that replaced them (HJ 212-2017 Appendix B,
/// column 原编码).
pub(super) const CODES_2005: &[(&str, &str)] = &[
    ("B01", "w00000"),
    ("001", "w01001"),
    ("002", "w01002"),
    ("003", "w01012"),
    ("010", "w01017"),
    ("011", "w01018"),
    ("015", "w01020"),
    ("020", "w20111"),
    ("022", "w20115"),
    ("023", "w20116"),
    ("024", "w20117"),
    ("026", "w20119"),
    ("027", "w20120"),
    ("065", "w21001"),
    ("060", "w21003"),
    ("101", "w21011"),
    ("070", "w21016"),
    ("080", "w22001"),
    ("110", "w23002"),
    ("B02", "a00000"),
    ("S02", "a01011"),
    ("S03", "a01012"),
    ("S08", "a01013"),
    ("S05", "a01014"),
    ("S06", "a01015"),
    ("S07", "a01016"),
    ("S04", "a01017"),
    ("30", "a05001"),
    ("S01", "a19001"),
    ("10", "a21001"),
    ("03", "a21002"),
    ("04", "a21005"),
    ("08", "a21024"),
    ("02", "a21026"),
    ("05", "a21028"),
    ("01", "a34013"),
];

/// 2017 factor codes that are registered cuntong metrics.
pub(super) const REGISTERED: &[(&str, Metric)] = &[
    ("w00000", Metric::W00000),
    ("w01001", Metric::W01001),
    ("w01009", Metric::W01009),
    ("w01010", Metric::W01010),
    ("w01012", Metric::W01012),
    ("w01014", Metric::W01014),
    ("w01018", Metric::W01018),
    ("w01019", Metric::W01019),
    ("w21001", Metric::W21001),
    ("w21003", Metric::W21003),
    ("w21011", Metric::W21011),
    ("a00000", Metric::A00000),
    ("a01011", Metric::A01011),
    ("a01012", Metric::A01012),
    ("a19001", Metric::A19001),
    ("a21002", Metric::A21002),
    ("a21005", Metric::A21005),
    ("a21026", Metric::A21026),
    ("a34002", Metric::A34002),
    ("a34004", Metric::A34004),
    ("a34013", Metric::A34013),
];

/// The HJ 212-2017 code of an HJ/T 212-2005 factor code (`"011"` → `"w01018"`), if the 2017
/// standard lists one.
pub fn code_2017(factor_2005: &str) -> Option<&'static str> {
    CODES_2005
        .iter()
        .find(|(old, _)| *old == factor_2005)
        .map(|(_, new)| *new)
}

/// Maps a factor code (2017 "w01018", or 2005 "011"/"060"/"001"/"B01"...) to a registered cuntong metric when there is one; else Metric::Code(the 2017 code if the 2005 code is known, else the code as is).
///
/// The code is not checked as a metric name: a device's odd code (too long, other characters)
/// comes back as it is, and [`Metric::from_name`] tells whether it can travel.
pub fn metric_for(factor: &str) -> Metric {
    let code = code_2017(factor).unwrap_or(factor);
    REGISTERED
        .iter()
        .find(|(c, _)| *c == code)
        .map_or_else(|| Metric::Code(code.to_owned()), |(_, m)| m.clone())
}
