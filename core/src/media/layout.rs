//! The composed picture of a meeting room (多画面): the layouts a box shows, where each tile of
//! a layout goes on the screen, and who holds the large tile of the voice-activated layout.
//!
//! [`arrange`] places sources (the main one first: the speaker, or shared content) on a screen
//! of any size; [`VoiceSwitch`] follows the sources' audio levels and gives the large tile to
//! the loudest, keeping it there long enough that the picture does not flicker. Both are pure:
//! the media engine feeds them what it measured and applies what they answer.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

/// How the received pictures share the screen. On the wire by its name (`"2x2"`), so that a
/// decoded layout is always one [`FromStr`] accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Layout {
    /// The main source alone, full screen.
    Single,
    /// The main source large, up to `n` others small beside and below it (`1+5`, `1+7`).
    OnePlus(u8),
    /// `n` × `n` equal tiles (`2x2`, `3x3`), the main source first.
    Grid(u8),
    /// Voice-activated: as `1+5`, the loudest source large ([`VoiceSwitch`]).
    Speaker,
}

/// The most small tiles beside a large one, and the widest grid.
pub const MAX_SMALL: u8 = 7;
pub const MAX_GRID: u8 = 4;

impl Layout {
    /// The layout a room takes while content is shared (双流): the content large, and beside
    /// it as many sources as this layout shows besides its main one (at least the main
    /// source, at most [`MAX_SMALL`]).
    pub fn with_content(self) -> Layout {
        Layout::OnePlus((self.tiles() - 1).clamp(1, usize::from(MAX_SMALL)) as u8)
    }

    /// How many sources it shows at most.
    pub fn tiles(self) -> usize {
        match self {
            Layout::Single => 1,
            Layout::OnePlus(n) => 1 + usize::from(n),
            Layout::Grid(n) => usize::from(n) * usize::from(n),
            Layout::Speaker => 6,
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layout::Single => f.write_str("single"),
            Layout::OnePlus(n) => write!(f, "1+{n}"),
            Layout::Grid(n) => write!(f, "{n}x{n}"),
            Layout::Speaker => f.write_str("speaker"),
        }
    }
}

impl From<Layout> for String {
    fn from(l: Layout) -> String {
        alloc::format!("{l}")
    }
}

impl TryFrom<String> for Layout {
    type Error = BadLayout;

    fn try_from(s: String) -> Result<Layout, BadLayout> {
        s.parse()
    }
}

/// A layout's name that is none: what was given, and what would be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLayout(pub String);

impl fmt::Display for BadLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no layout {:?}: single, 1+N (N 1 to {MAX_SMALL}), NxN (N 2 to {MAX_GRID}) or speaker",
            self.0
        )
    }
}

impl FromStr for Layout {
    type Err = BadLayout;

    fn from_str(s: &str) -> Result<Layout, BadLayout> {
        let bad = || BadLayout(s.into());
        let number = |t: &str| -> Result<u8, BadLayout> {
            if t.is_empty() || t.len() > 1 || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            t.parse().map_err(|_| bad())
        };
        match s {
            "single" => Ok(Layout::Single),
            "speaker" => Ok(Layout::Speaker),
            _ => {
                if let Some(n) = s.strip_prefix("1+") {
                    let n = number(n)?;
                    return if (1..=MAX_SMALL).contains(&n) {
                        Ok(Layout::OnePlus(n))
                    } else {
                        Err(bad())
                    };
                }
                let (a, b) = s.split_once('x').ok_or_else(bad)?;
                let (a, b) = (number(a)?, number(b)?);
                if a == b && (2..=MAX_GRID).contains(&a) {
                    Ok(Layout::Grid(a))
                } else {
                    Err(bad())
                }
            }
        }
    }
}

/// A tile's place on the screen, in pixels from the top left corner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

/// One source's tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile<T> {
    pub source: T,
    pub rect: Rect,
    /// The main (large) tile of a `1+N` or speaker layout, or the only one of `single`.
    pub main: bool,
}

/// Where `sources` go in `layout` on a `width` × `height` screen: the first is the main one,
/// the others follow in order; those beyond what the layout shows are left out. Tiles are cut
/// from a grid of equal cells, even-sized (what video scalers and encoders want), and never
/// overlap.
pub fn arrange<T: Copy>(layout: Layout, sources: &[T], width: u32, height: u32) -> Vec<Tile<T>> {
    let shown = &sources[..sources.len().min(layout.tiles())];
    let cell = |cells: u32, i: u32, size: u32| (size / cells * i) & !1;
    let span =
        |cells: u32, from: u32, to: u32, size: u32| cell(cells, to, size) - cell(cells, from, size);
    let place = |cells: u32, col: u32, row: u32, across: u32| Rect {
        x: cell(cells, col, width),
        y: cell(cells, row, height),
        w: span(cells, col, col + across, width),
        h: span(cells, row, row + across, height),
    };
    match layout {
        Layout::Single => shown
            .first()
            .map(|s| Tile {
                source: *s,
                rect: place(1, 0, 0, 1),
                main: true,
            })
            .into_iter()
            .collect(),
        Layout::Grid(n) => {
            let n = u32::from(n);
            shown
                .iter()
                .zip(0u32..)
                .map(|(s, i)| Tile {
                    source: *s,
                    rect: place(n, i % n, i / n, 1),
                    main: false,
                })
                .collect()
        }
        Layout::OnePlus(_) | Layout::Speaker => {
            // The large tile takes (k-1) × (k-1) cells of a k × k grid; the small ones go
            // down the right column, then along the bottom row from the left.
            let small = shown.len().saturating_sub(1) as u32;
            let k = if small <= 5 { 3 } else { 4 };
            let mut cells = (0..k - 1)
                .map(|row| (k - 1, row))
                .chain((0..k).map(|col| (col, k - 1)));
            let mut out = Vec::with_capacity(shown.len());
            for (i, s) in shown.iter().enumerate() {
                let (rect, main) = if i == 0 {
                    (place(k, 0, 0, k - 1), true)
                } else {
                    let Some((col, row)) = cells.next() else {
                        break;
                    };
                    (place(k, col, row, 1), false)
                };
                out.push(Tile {
                    source: *s,
                    rect,
                    main,
                });
            }
            out
        }
    }
}

/// Who holds the large tile of the voice-activated layout.
///
/// A source takes it over when it has been the loudest, above [`VoiceSwitch::floor_db`] and
/// [`VoiceSwitch::margin_db`] louder than the holder, for [`VoiceSwitch::hold_ms`]; the holder
/// keeps it while everybody is quiet. A cough or a laugh (shorter than the hold) moves
/// nothing, and two sites speaking by turns swap at most once a hold.
#[derive(Clone, Debug, PartialEq)]
pub struct VoiceSwitch<T> {
    pub floor_db: f64,
    pub margin_db: f64,
    pub hold_ms: u64,
    holder: Option<T>,
    /// The source that has been the loudest since when.
    candidate: Option<(T, u64)>,
}

impl<T: Copy + PartialEq> VoiceSwitch<T> {
    /// Speech above -45 dBov, 6 dB louder than the holder, for 1.5 s.
    pub fn new() -> VoiceSwitch<T> {
        VoiceSwitch {
            floor_db: -45.0,
            margin_db: 6.0,
            hold_ms: 1_500,
            holder: None,
            candidate: None,
        }
    }

    /// Who holds the large tile.
    pub fn holder(&self) -> Option<T> {
        self.holder
    }

    /// The sources' audio levels (dBov, e.g. RMS over the last 100 ms) at `now_ms`; who holds
    /// the large tile after them.
    pub fn observe(&mut self, levels: &[(T, f64)], now_ms: u64) -> Option<T> {
        let held = self
            .holder
            .and_then(|h| levels.iter().find(|(s, _)| *s == h).map(|(_, l)| *l))
            .unwrap_or(f64::NEG_INFINITY);
        let loudest = levels
            .iter()
            .filter(|(_, l)| l.is_finite() && *l >= self.floor_db)
            .fold(None, |best: Option<(T, f64)>, &(s, l)| match best {
                Some((_, b)) if b >= l => best,
                _ => Some((s, l)),
            });
        match loudest {
            Some((s, l))
                if Some(s) != self.holder
                    && (self.holder.is_none() || l >= held + self.margin_db) =>
            {
                let since = match self.candidate {
                    Some((c, since)) if c == s => since,
                    _ => now_ms,
                };
                self.candidate = Some((s, since));
                if self.holder.is_none() || now_ms.saturating_sub(since) >= self.hold_ms {
                    self.holder = Some(s);
                    self.candidate = None;
                }
            }
            _ => self.candidate = None,
        }
        self.holder
    }

    /// A source left: it no longer holds the tile or waits for it.
    pub fn forget(&mut self, source: T) {
        if self.holder == Some(source) {
            self.holder = None;
        }
        if self.candidate.is_some_and(|(c, _)| c == source) {
            self.candidate = None;
        }
    }
}

impl<T: Copy + PartialEq> Default for VoiceSwitch<T> {
    fn default() -> Self {
        VoiceSwitch::new()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn content_takes_the_large_tile_with_the_main_source_and_as_many_others_beside_it() {
        let with = |l: &str| l.parse::<Layout>().unwrap().with_content().to_string();
        assert_eq!(with("single"), "1+1");
        assert_eq!(with("1+5"), "1+5");
        assert_eq!(with("2x2"), "1+3");
        assert_eq!(with("3x3"), "1+7");
        assert_eq!(with("4x4"), "1+7");
        assert_eq!(with("speaker"), "1+5");
    }
    use alloc::string::ToString;
    use alloc::vec;

    #[test]
    fn layouts_read_back_from_their_names_and_nothing_else_is_one() {
        for l in [
            Layout::Single,
            Layout::OnePlus(1),
            Layout::OnePlus(5),
            Layout::OnePlus(7),
            Layout::Grid(2),
            Layout::Grid(3),
            Layout::Grid(4),
            Layout::Speaker,
        ] {
            assert_eq!(l.to_string().parse::<Layout>(), Ok(l));
        }
        for bad in [
            "", "1+0", "1+8", "1+", "1+55", "2x3", "1x1", "5x5", "x", "2x", "+1", "SINGLE", "3x3 ",
        ] {
            let e = bad.parse::<Layout>().unwrap_err();
            assert!(e.to_string().contains("single, 1+N"), "{bad}: {e}");
            // On the wire too: a layout that is none does not decode.
            let wire = crate::envelope::encode(&String::from(bad)).unwrap();
            assert!(crate::envelope::decode::<Layout>(&wire).is_err(), "{bad}");
        }
        let wire = crate::envelope::encode(&Layout::Grid(3)).unwrap();
        assert_eq!(
            crate::envelope::decode::<Layout>(&wire),
            Ok(Layout::Grid(3))
        );
    }

    /// No two tiles overlap, every tile is on the screen, even-sized and not empty.
    fn check(tiles: &[Tile<u32>], w: u32, h: u32) {
        for (i, a) in tiles.iter().enumerate() {
            let r = a.rect;
            assert!(
                r.w > 0 && r.h > 0 && r.x + r.w <= w && r.y + r.h <= h,
                "{r:?}"
            );
            assert!(
                r.x % 2 == 0 && r.y % 2 == 0 && r.w % 2 == 0 && r.h % 2 == 0,
                "{r:?}"
            );
            for b in &tiles[i + 1..] {
                let s = b.rect;
                let apart =
                    r.x + r.w <= s.x || s.x + s.w <= r.x || r.y + r.h <= s.y || s.y + s.h <= r.y;
                assert!(apart, "{r:?} and {s:?} overlap");
            }
        }
    }

    #[test]
    fn every_layout_places_its_sources_without_overlap_the_main_one_largest() {
        let sources: Vec<u32> = (0..20).collect();
        for (w, h) in [(1280, 720), (1920, 1080), (640, 360), (720, 576)] {
            for l in [
                "single", "1+1", "1+5", "1+7", "2x2", "3x3", "4x4", "speaker",
            ] {
                let layout: Layout = l.parse().unwrap();
                for n in [1, 2, 4, 6, 9, 20] {
                    let tiles = arrange(layout, &sources[..n], w, h);
                    assert_eq!(tiles.len(), n.min(layout.tiles()), "{l} with {n}");
                    check(&tiles, w, h);
                    let order: Vec<u32> = tiles.iter().map(|t| t.source).collect();
                    assert_eq!(order, sources[..tiles.len()], "in order");
                    if let Some(main) = tiles.iter().find(|t| t.main) {
                        assert_eq!(main.source, 0);
                        let area = |r: Rect| r.w * r.h;
                        assert!(tiles.iter().all(|t| area(t.rect) <= area(main.rect)));
                    }
                }
            }
        }
        // 2x2 on 1280x720: four quarters.
        let q = arrange(Layout::Grid(2), &[1, 2, 3, 4], 1280, 720);
        let rects: Vec<(u32, u32, u32, u32)> = q
            .iter()
            .map(|t| (t.rect.x, t.rect.y, t.rect.w, t.rect.h))
            .collect();
        assert_eq!(
            rects,
            vec![
                (0, 0, 640, 360),
                (640, 0, 640, 360),
                (0, 360, 640, 360),
                (640, 360, 640, 360)
            ]
        );
        // 1+5: two thirds of the screen each way for the speaker.
        let t = arrange(Layout::OnePlus(5), &[1, 2, 3, 4, 5, 6], 1920, 1080);
        assert_eq!(
            t[0].rect,
            Rect {
                x: 0,
                y: 0,
                w: 1280,
                h: 720
            }
        );
        assert_eq!(
            t[5].rect,
            Rect {
                x: 1280,
                y: 720,
                w: 640,
                h: 360
            }
        );
        assert!(arrange::<u32>(Layout::Grid(3), &[], 1280, 720).is_empty());
    }

    #[test]
    fn the_loudest_takes_the_large_tile_after_a_hold_and_a_cough_moves_nothing() {
        let mut v = VoiceSwitch::new();
        assert_eq!(
            v.observe(&[(1, -80.0), (2, -90.0)], 0),
            None,
            "silence: nobody"
        );
        // The first voice takes the tile at once.
        assert_eq!(v.observe(&[(1, -20.0), (2, -80.0)], 100), Some(1));
        // Site 2 coughs (loud, short): 1 keeps it.
        for t in (200..1_200).step_by(100) {
            assert_eq!(v.observe(&[(1, -30.0), (2, -10.0)], t), Some(1));
        }
        assert_eq!(v.observe(&[(1, -30.0), (2, -80.0)], 1_300), Some(1));
        // Both speak, 2 barely louder (inside the margin): 1 keeps it, however long.
        for t in (1_400..6_000).step_by(100) {
            assert_eq!(v.observe(&[(1, -25.0), (2, -22.0)], t), Some(1));
        }
        // 2 speaks on, clearly louder, for the hold: it takes the tile, and keeps it in silence.
        let mut t = 6_000;
        while v.observe(&[(1, -60.0), (2, -20.0)], t) != Some(2) {
            t += 100;
            assert!(t <= 6_000 + 1_500, "no switch after the hold");
        }
        assert!(t >= 6_000 + 1_500, "switched before the hold: {t}");
        assert_eq!(v.observe(&[(1, -90.0), (2, -90.0)], t + 5_000), Some(2));
        // A source that leaves lets go of it.
        v.forget(2);
        assert_eq!(v.holder(), None);
        // Levels that are not numbers are nobody's.
        assert_eq!(
            v.observe(&[(1, f64::NAN), (2, f64::INFINITY)], t + 6_000),
            None
        );
    }
}
