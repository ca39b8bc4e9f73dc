//! The duty button: a push button wired to a GPIO line (any embedded-hal 1.x [`InputPin`]) with
//! which the people at a village or county office raise a duty report (值班 / emergency report)
//! without a keyboard. A press counts once the button has been held for `hold` (so a bump does
//! not call the duty office); it must be released before it counts again, and presses within
//! `cooldown` of a report are taken as the same call for help.
//!
//! On a box the line is a Linux GPIO character device (`/dev/gpiochip0`, line 17; cargo feature
//! `linux-gpio`); in the simulator it is a file holding `0` or `1`.
//!
//! ```toml
//! [duty_button]
//! chip = "/dev/gpiochip0"
//! line = 17
//! active_low = true         # pressed pulls the line to ground (the usual wiring)
//! hold = "1s"
//! kind = "emergency"
//! text = "值班求助按钮 (duty button pressed)"
//! ```

use std::path::PathBuf;
use std::time::Duration;

use embedded_hal::digital::InputPin;

/// `[duty_button]` of `terminal.toml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DutyButtonConfig {
    pub chip: PathBuf,
    pub line: u32,
    pub active_low: bool,
    pub hold: Duration,
    pub cooldown: Duration,
    /// The report's kind and text.
    pub kind: String,
    pub text: String,
}

impl Default for DutyButtonConfig {
    fn default() -> DutyButtonConfig {
        DutyButtonConfig {
            chip: PathBuf::from("/dev/gpiochip0"),
            line: 17,
            active_low: true,
            hold: Duration::from_secs(1),
            cooldown: Duration::from_secs(30),
            kind: "emergency".into(),
            text: "值班求助按钮 (duty button pressed)".into(),
        }
    }
}

/// Decides when a sampled button level is a press (sans-IO: levels and times in).
#[derive(Clone, Debug)]
pub struct PressDetector {
    hold_ms: u64,
    cooldown_ms: u64,
    /// When the current press started, if the button is down.
    down_since: Option<u64>,
    /// This press has already counted.
    counted: bool,
    last_report: Option<u64>,
}

impl PressDetector {
    pub fn new(hold: Duration, cooldown: Duration) -> PressDetector {
        PressDetector {
            hold_ms: hold.as_millis() as u64,
            cooldown_ms: cooldown.as_millis() as u64,
            down_since: None,
            counted: false,
            last_report: None,
        }
    }

    /// The button is `pressed` at `now_ms`; true when this is a report.
    pub fn sample(&mut self, pressed: bool, now_ms: u64) -> bool {
        if !pressed {
            self.down_since = None;
            self.counted = false;
            return false;
        }
        let since = *self.down_since.get_or_insert(now_ms);
        if self.counted || now_ms.saturating_sub(since) < self.hold_ms {
            return false;
        }
        self.counted = true;
        if self
            .last_report
            .is_some_and(|at| now_ms.saturating_sub(at) < self.cooldown_ms)
        {
            return false;
        }
        self.last_report = Some(now_ms);
        true
    }
}

/// Why a duty button's line cannot be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum ButtonError {
    #[error("duty button: {chip}: {problem}")]
    Chip { chip: String, problem: String },
    #[error("duty button: {chip} line {line}: {problem}")]
    Line {
        chip: String,
        line: u32,
        problem: String,
    },
    #[error(
        "duty button: {chip} line {line}: this build has no GPIO support (cargo feature linux-gpio)"
    )]
    NoGpio { chip: String, line: u32 },
    /// The pin's own error, as its driver words it.
    #[error("{0}")]
    Read(String),
}

/// A duty button: its line, its press detector and the report it raises.
pub struct DutyButton {
    pin: Box<dyn FnMut() -> Result<bool, ButtonError> + Send>,
    detector: PressDetector,
    pub kind: String,
    pub text: String,
    /// The line could not be read at the last sample (reported once per run of failures).
    failing: bool,
}

impl std::fmt::Debug for DutyButton {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DutyButton")
            .field("kind", &self.kind)
            .finish()
    }
}

/// How often the line is sampled.
pub const POLL: Duration = Duration::from_millis(20);

impl DutyButton {
    /// A button on `pin`, as configured (`active_low`: a low level is pressed).
    pub fn new<P>(mut pin: P, cfg: &DutyButtonConfig) -> DutyButton
    where
        P: InputPin + Send + 'static,
    {
        let active_low = cfg.active_low;
        DutyButton {
            pin: Box::new(move || {
                let high = pin
                    .is_high()
                    .map_err(|e| ButtonError::Read(format!("{e:?}")))?;
                Ok(high != active_low)
            }),
            detector: PressDetector::new(cfg.hold, cfg.cooldown),
            kind: cfg.kind.clone(),
            text: cfg.text.clone(),
            failing: false,
        }
    }

    /// Samples the line; true when a report is to be raised.
    pub fn poll(&mut self, now_ms: u64) -> bool {
        match (self.pin)() {
            Ok(pressed) => {
                self.failing = false;
                self.detector.sample(pressed, now_ms)
            }
            Err(e) => {
                if !self.failing {
                    tracing::warn!(error = %e, "cannot read the duty button's line");
                }
                self.failing = true;
                self.detector.sample(false, now_ms)
            }
        }
    }
}

/// Opens the configured GPIO line of a box (Linux GPIO character device).
#[cfg(all(target_os = "linux", feature = "linux-gpio"))]
pub fn open(cfg: &DutyButtonConfig) -> Result<DutyButton, ButtonError> {
    use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
    let chip = || cfg.chip.display().to_string();
    let line = |e: &dyn std::fmt::Display| ButtonError::Line {
        chip: chip(),
        line: cfg.line,
        problem: e.to_string(),
    };
    let mut gpio = Chip::new(&cfg.chip).map_err(|e| ButtonError::Chip {
        chip: chip(),
        problem: e.to_string(),
    })?;
    let handle = gpio
        .get_line(cfg.line)
        .and_then(|l| l.request(LineRequestFlags::INPUT, 0, "cuntong-duty-button"))
        .map_err(|e| line(&e))?;
    let pin = linux_embedded_hal::CdevPin::new(handle).map_err(|e| line(&e))?;
    Ok(DutyButton::new(pin, cfg))
}

/// Without GPIO support in this build, a configured button is an error at start-up.
#[cfg(not(all(target_os = "linux", feature = "linux-gpio")))]
pub fn open(cfg: &DutyButtonConfig) -> Result<DutyButton, ButtonError> {
    Err(ButtonError::NoGpio {
        chip: cfg.chip.display().to_string(),
        line: cfg.line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector() -> PressDetector {
        PressDetector::new(Duration::from_secs(1), Duration::from_secs(30))
    }

    #[test]
    fn a_press_counts_once_it_is_held_for_the_hold_time() {
        let mut d = detector();
        assert!(!d.sample(true, 0));
        assert!(!d.sample(true, 999));
        assert!(d.sample(true, 1_000));
        // Held on: still the same press.
        assert!(!d.sample(true, 5_000));
    }

    #[test]
    fn a_bump_shorter_than_the_hold_time_is_nothing() {
        let mut d = detector();
        for t in (0..900).step_by(20) {
            assert!(!d.sample(true, t));
        }
        assert!(!d.sample(false, 900));
        assert!(!d.sample(true, 920));
        assert!(
            !d.sample(true, 1_800),
            "the hold starts over after a release"
        );
        assert!(d.sample(true, 1_920));
    }

    #[test]
    fn presses_within_the_cooldown_are_the_same_call_for_help() {
        let mut d = detector();
        assert!(!d.sample(true, 0));
        assert!(d.sample(true, 1_000));
        assert!(!d.sample(false, 2_000));
        assert!(!d.sample(true, 3_000));
        assert!(!d.sample(true, 4_000), "within 30 s of the report");
        assert!(!d.sample(false, 40_000));
        assert!(!d.sample(true, 41_000));
        assert!(d.sample(true, 42_000), "a new report after the cooldown");
    }

    /// A pin whose level the test sets.
    struct Level(std::sync::Arc<std::sync::atomic::AtomicBool>);

    impl embedded_hal::digital::ErrorType for Level {
        type Error = core::convert::Infallible;
    }

    impl InputPin for Level {
        fn is_high(&mut self) -> Result<bool, Self::Error> {
            Ok(self.0.load(std::sync::atomic::Ordering::SeqCst))
        }
        fn is_low(&mut self) -> Result<bool, Self::Error> {
            self.is_high().map(|h| !h)
        }
    }

    #[test]
    fn an_active_low_button_is_pressed_when_its_line_is_low() {
        let high = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let mut b = DutyButton::new(Level(high.clone()), &DutyButtonConfig::default());
        assert!(!b.poll(0));
        assert!(!b.poll(2_000), "high is released");
        high.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(!b.poll(3_000));
        assert!(b.poll(4_000));
    }
}
