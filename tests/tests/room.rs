//! The meeting room on a box, through real GStreamer pipelines: four sites' streams (each a
//! picture of its own colour and a tone) composed into one picture in the `2x2` layout and
//! mixed into one sound, written to a Matroska file that ffmpeg then reads: one video stream
//! of 1280x720 with the four colours in its four quarters, and one audio stream.
//!
//! And the whole way: a county meeting of four villages whose chair sets `2x2` for everyone
//! (`cuntong meeting layout`); central's screen reaches the boxes, the county relay forwards
//! the pictures on it, and a village's room shows four sites' pictures, each captioned. A
//! village's box shares content (colour bars at 1920x1080): the others decode it at its own
//! size and show it in their large tile, and a second box's request is refused meanwhile. In
//! the chair's `speaker` layout, a room shows large the one site the chair lets be heard, and
//! the next one once the chair lets another be heard instead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use cuntong_core::media::layout::Layout;
use cuntong_core::meeting::{AudioCodec, MediaProfile, Tier};
use cuntong_e2e::{last_picture_at, media_duration, media_streams};
use cuntong_terminal::config::Display;
use cuntong_terminal::media::room::FPS;
use cuntong_terminal::media::{Capture, Playback, Receiver, SendSettings, Sender};

/// The sites' colours (ARGB) and the same as RGB bytes.
const COLOURS: [(u32, [u8; 3]); 4] = [
    (0xffff_0000, [255, 0, 0]),
    (0xff00_ff00, [0, 255, 0]),
    (0xff00_00ff, [0, 0, 255]),
    (0xffff_ffff, [255, 255, 255]),
];

/// Each test here runs whole pipelines of several sites and a room (a core or more): one at a
/// time, or a starved room takes its sites' pictures for frozen.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ROOMS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ROOMS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The mean colour of a 64x64 square around (`x`, `y`) of an RGB picture `w` wide.
fn mean(rgb: &[u8], w: usize, x: usize, y: usize) -> [u8; 3] {
    let mut sum = [0u64; 3];
    for row in y - 32..y + 32 {
        for col in x - 32..x + 32 {
            let p = (row * w + col) * 3;
            for c in 0..3 {
                sum[c] += u64::from(rgb[p + c]);
            }
        }
    }
    sum.map(|s| (s / (64 * 64)) as u8)
}

fn close(a: [u8; 3], b: [u8; 3]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= 40)
}

/// A room in `layout`, written to `file`, receiving under `key`.
fn room(file: &std::path::Path, key: &[u8], layout: Layout) -> Receiver {
    let playback = Playback::Room {
        display: Display::File(file.to_path_buf()),
        layout,
    };
    Receiver::start(0, key, playback, 60, AudioCodec::Opus).unwrap()
}

/// A site sending a picture of colour `argb` and a tone as `ssrc` to the room of `rx`: its video
/// to the room's video port and its audio to its audio port, as its relay forwards them.
fn site(rx: &Receiver, key: &[u8], ssrc: u32, argb: u32) -> [Sender; 2] {
    let port = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    let full = SendSettings::for_tier(&MediaProfile::named("sd").unwrap(), Tier::Full);
    let capture = Capture::Colour(argb);
    let send = |settings, to| {
        let mut tx = Sender::start(&capture, settings, ssrc, Some(key), to, None).unwrap();
        tx.set_active(true);
        tx
    };
    [
        send(
            SendSettings {
                audio: None,
                ..full
            },
            port(rx.video_port()),
        ),
        send(
            SendSettings {
                video: None,
                ..full
            },
            port(rx.audio_port()),
        ),
    ]
}

/// Waits (at most 20 s) until every stream of `ssrcs` has given `rx` a second of pictures and
/// sound.
fn wait_decoded(rx: &Receiver, ssrcs: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while ssrcs
        .iter()
        .any(|ssrc| rx.frames(*ssrc) < 25 || rx.audio_buffers(ssrc | 1) < 25)
    {
        assert!(
            Instant::now() < deadline,
            "not every stream decoded: {:?}",
            rx.streams()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (at most 30 s) for the room's file at `file` to be finished: its length written at its
/// end once the room stopped.
fn finished(file: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while media_duration(file).is_none() {
        assert!(
            Instant::now() < deadline,
            "{} was not finished",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The 1280x720 pictures ffmpeg decodes from the file at `file`, as RGB: `seek` goes before
/// the input (where to start), `pick` after it (which frames).
fn rgb_pictures(file: &std::path::Path, seek: &[&str], pick: &[&str]) -> Vec<Vec<u8>> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error"])
        .args(seek)
        .arg("-i")
        .arg(file)
        .args(pick)
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .expect("ffmpeg (the test command installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .chunks_exact(1280 * 720 * 3)
        .map(<[u8]>::to_vec)
        .collect()
}

/// The last picture of the Matroska file at `file` (sought half a frame before its time).
fn last_picture(file: &std::path::Path) -> Vec<u8> {
    let at = last_picture_at(file).expect("the file has pictures");
    let from = (at - 0.5 / f64::from(FPS)).max(0.0).to_string();
    let mut frames = rgb_pictures(file, &["-ss", &from], &["-frames:v", "1"]);
    assert_eq!(frames.len(), 1, "no last picture");
    frames.remove(0)
}

/// The picture at `secs` seconds into the file at `file`.
fn picture_at(file: &std::path::Path, secs: u64) -> Vec<u8> {
    let mut frames = rgb_pictures(file, &["-ss", &secs.to_string()], &["-frames:v", "1"]);
    assert_eq!(frames.len(), 1, "no picture at {secs} s");
    frames.remove(0)
}

/// The pictures of the file at `file`, two a second.
fn pictures(file: &std::path::Path) -> Vec<Vec<u8>> {
    rgb_pictures(file, &[], &["-vf", "fps=2"])
}

#[test]
fn four_sites_are_composed_into_the_quarters_of_one_picture_with_one_mixed_sound() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("room.mkv");
    let key = [9u8; 30];
    let rx = room(&file, &key, Layout::Grid(2));
    let ssrcs: Vec<u32> = (0..COLOURS.len() as u32).map(|i| 0x1000 + 2 * i).collect();
    let senders: Vec<[Sender; 2]> = ssrcs
        .iter()
        .zip(COLOURS)
        .map(|(ssrc, (argb, _))| site(&rx, &key, *ssrc, argb))
        .collect();
    // Every site's picture decoded for a second, and a second more of the room.
    wait_decoded(&rx, &ssrcs);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(rx.room().map(|r| r.layout()), Some(Layout::Grid(2)));
    // The room ends while the sites still send: its last pictures are live ones.
    drop(rx);
    drop(senders);
    finished(&file);

    // One video stream, the room's size, and one audio stream.
    assert_eq!(
        media_streams(&file),
        Some(vec!["h264,video,1280,720".into(), "opus,audio".into()])
    );

    // The last picture: each quarter is one site's colour, every site in one quarter.
    let rgb = last_picture(&file);
    let quarters: Vec<[u8; 3]> = [(320, 180), (960, 180), (320, 540), (960, 540)]
        .iter()
        .map(|&(x, y)| mean(&rgb, 1280, x, y))
        .collect();
    for (_, want) in COLOURS {
        let found = quarters.iter().filter(|q| close(**q, want)).count();
        assert_eq!(found, 1, "colour {want:?} in the quarters {quarters:?}");
    }
}

#[test]
fn in_the_speaker_layout_the_site_that_speaks_takes_the_large_tile_and_keeps_it_through_a_cough() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("speaker.mkv");
    let key = [7u8; 30];
    let rx = room(&file, &key, Layout::Speaker);
    let (red, blue) = (0x2000, 0x2002);
    let red_site = site(&rx, &key, red, COLOURS[0].0);
    let blue_site = site(&rx, &key, blue, COLOURS[2].0);
    blue_site[1].set_muted(true);
    wait_decoded(&rx, &[red, blue]);
    let main = |rx: &Receiver| rx.room().and_then(|r| r.main());
    let until = |rx: &Receiver, want: u32, within: Duration| {
        let deadline = Instant::now() + within;
        while main(rx) != Some(want) {
            assert!(
                Instant::now() < deadline,
                "the main tile is {:?}, not {want:#x}",
                main(rx)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    until(&rx, red, Duration::from_secs(5));
    // Blue speaks up for a moment (shorter than the hold): red keeps the tile.
    blue_site[1].set_muted(false);
    red_site[1].set_muted(true);
    std::thread::sleep(Duration::from_millis(500));
    blue_site[1].set_muted(true);
    red_site[1].set_muted(false);
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(main(&rx), Some(red), "a short burst moved the main tile");
    // Blue speaks on, red is quiet: blue takes the tile after the hold.
    blue_site[1].set_muted(false);
    red_site[1].set_muted(true);
    let asked = Instant::now();
    until(&rx, blue, Duration::from_secs(5));
    assert!(
        asked.elapsed() >= Duration::from_millis(1_000),
        "switched within {:?}",
        asked.elapsed()
    );
    std::thread::sleep(Duration::from_secs(1));
    drop(rx);
    drop((red_site, blue_site));
    finished(&file);
    // The large tile (two thirds of the picture each way) shows blue.
    let rgb = last_picture(&file);
    let large = mean(&rgb, 1280, 426, 240);
    assert!(close(large, COLOURS[2].1), "the large tile is {large:?}");
}

#[test]
fn a_layout_changed_while_the_room_runs_moves_the_tiles() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("changed.mkv");
    let key = [5u8; 30];
    let rx = room(&file, &key, Layout::Single);
    let sites = [
        site(&rx, &key, 0x3000, COLOURS[1].0),
        site(&rx, &key, 0x3002, COLOURS[3].0),
    ];
    wait_decoded(&rx, &[0x3000, 0x3002]);
    rx.room().unwrap().set_layout(Layout::Grid(2));
    std::thread::sleep(Duration::from_secs(1));
    drop(rx);
    drop(sites);
    finished(&file);
    let rgb = last_picture(&file);
    let top = [mean(&rgb, 1280, 320, 180), mean(&rgb, 1280, 960, 180)];
    for want in [COLOURS[1].1, COLOURS[3].1] {
        assert_eq!(
            top.iter().filter(|q| close(**q, want)).count(),
            1,
            "{top:?}"
        );
    }
    let empty = mean(&rgb, 1280, 320, 540);
    assert!(close(empty, [0, 0, 0]), "the empty tile is {empty:?}");
}

/// How many pixels of the box from (`x0`, `y0`) to (`x1`, `y1`) are near white.
fn white_pixels(rgb: &[u8], w: usize, from: (usize, usize), to: (usize, usize)) -> usize {
    pixels(rgb, w, from, to, |p| p.iter().all(|c| *c > 200))
}

/// How many pixels of the box from (`x0`, `y0`) to (`x1`, `y1`) are `like` that.
fn pixels(
    rgb: &[u8],
    w: usize,
    (x0, y0): (usize, usize),
    (x1, y1): (usize, usize),
    like: impl Fn(&[u8]) -> bool,
) -> usize {
    (y0..y1)
        .flat_map(|y| (x0..x1).map(move |x| (y * w + x) * 3))
        .filter(|p| like(&rgb[*p..*p + 3]))
        .count()
}

#[test]
fn the_chairs_screen_captions_each_tile_with_its_sites_name_and_a_missing_or_frozen_picture_shows_why()
 {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("screen.mkv");
    let key = [3u8; 30];
    // The box is configured for 1+5; the chair's screen asks for 2x2.
    let rx = room(&file, &key, Layout::OnePlus(5));
    let (red, green, blue, absent) = (0x4000, 0x4002, 0x4004, 0x4006);
    let names = ["东村", "西村", "南村", "北村"];
    let screen: Vec<(u32, String)> = [red, green, blue, absent]
        .into_iter()
        .zip(names)
        .map(|(s, n)| (s, n.to_owned()))
        .collect();
    rx.room().unwrap().set_screen(Some(Layout::Grid(2)), screen);
    assert_eq!(rx.room().unwrap().layout(), Layout::Grid(2));
    let red_site = site(&rx, &key, red, COLOURS[0].0);
    let green_site = site(&rx, &key, green, COLOURS[1].0);
    let blue_site = site(&rx, &key, blue, COLOURS[2].0);
    wait_decoded(&rx, &[red, green, blue]);
    let captions = |rx: &Receiver| rx.room().unwrap().captions();
    let until = |rx: &Receiver, want: &[&str]| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while captions(rx) != want {
            assert!(Instant::now() < deadline, "captions {:?}", captions(rx));
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Every site by its name, in the screen's order; the site whose picture never came says so.
    until(&rx, &["东村", "西村", "南村", "北村  等待图像"]);
    // The blue site's picture stops: its tile says it froze.
    drop(blue_site);
    until(&rx, &["东村", "西村", "南村  图像中断", "北村  等待图像"]);
    std::thread::sleep(Duration::from_secs(1));
    drop(rx);
    drop((red_site, green_site));
    finished(&file);

    let rgb = last_picture(&file);
    // The pictures that came are in their tiles, in the screen's order.
    assert!(close(mean(&rgb, 1280, 320, 180), COLOURS[0].1));
    assert!(close(mean(&rgb, 1280, 960, 180), COLOURS[1].1));
    // The frozen and the missing picture are not shown: their tiles are dark.
    assert!(close(mean(&rgb, 1280, 320, 540), [0, 0, 0]));
    assert!(close(mean(&rgb, 1280, 960, 540), [0, 0, 0]));
    // Each tile's caption is drawn at its bottom left: white text where the tile has none.
    for (x, y) in [(0, 360), (640, 360), (0, 720), (640, 720)] {
        let text = white_pixels(&rgb, 1280, (x + 12, y - 44), (x + 200, y - 10));
        assert!(
            text > 30,
            "no caption at the tile ending at ({x}, {y}): {text} white pixels"
        );
    }
    // Nowhere else in the red tile is there white.
    assert_eq!(white_pixels(&rgb, 1280, (100, 60), (540, 300)), 0);
}

/// The mean colours of the four quarters of a 1280x720 picture.
fn quarters(rgb: &[u8]) -> Vec<[u8; 3]> {
    [(320, 180), (960, 180), (320, 540), (960, 540)]
        .iter()
        .map(|&(x, y)| mean(rgb, 1280, x, y))
        .collect()
}

/// A county meeting with real media (chaired by `chair`, `villages` villages) in which the
/// village `watcher` alone composes its room to a file (a room costs about a core); `extra`
/// more simulator flags. The county's temporary directory, the county, and the file.
fn watched_county(
    villages: usize,
    chair: &str,
    watcher: &str,
    extra: &[&str],
) -> (
    tempfile::TempDir,
    cuntong_e2e::MediaCounty,
    std::path::PathBuf,
) {
    let dir = tempfile::tempdir().unwrap();
    let rooms = dir.path().join("rooms");
    std::fs::create_dir_all(&rooms).unwrap();
    let mut args = vec!["--rooms", rooms.to_str().unwrap(), "--room", watcher];
    args.extend_from_slice(extra);
    let county = cuntong_e2e::MediaCounty::chaired_by(dir.path(), villages, &args, chair);
    assert!(
        county.villages().iter().any(|v| v == watcher),
        "{watcher} is not a village of the county"
    );
    (dir, county, rooms.join(format!("{watcher}.mkv")))
}

/// Ends the county's meeting and waits until the watcher's room file is whole (its box wrote
/// its length at the end).
fn end_and_finish(county: cuntong_e2e::MediaCounty, file: &std::path::Path) {
    cuntong_e2e::ok(county.cuntong(&["meeting", "end", &county.id]));
    assert!(
        cuntong_e2e::wait_until(Duration::from_secs(40), || media_duration(file).is_some()),
        "{:?}\n{}",
        media_streams(file),
        county.fleet.log_text()
    );
}

#[test]
fn the_chairs_2x2_reaches_every_village_through_central_and_the_relay_and_shows_four_captioned_sites()
 {
    let _one = one_at_a_time();
    use cuntong_e2e::{ok, sites, wait_until};

    let (_dir, county, file) =
        watched_county(4, cuntong_e2e::COUNTY_RELAY, "130102001001-main", &[]);
    let (db, id) = (&county.db, &county.id);
    let cuntong = |args: &[&str]| county.cuntong(args);
    let bad = cuntong(&["meeting", "layout", id, "5x5"]);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "a layout that is none is a usage error"
    );
    ok(cuntong(&["meeting", "layout", id, "2x2"]));
    let status = ok(cuntong(&["meeting", "status", id]));
    assert!(status.contains("layout 2x2"), "{status}");

    // Each village receives and decodes four pictures: the chair's and the three other
    // villages'.
    let villages = county.villages();
    assert_eq!(villages.len(), 4);
    let four = || {
        let all = sites(db, None);
        villages.iter().all(|v| {
            all.iter().any(|s| {
                s.terminal == *v
                    && s.metrics.get("media.streams") == Some(&4.0)
                    && s.metrics.get("media.frames").is_some_and(|f| *f >= 10.0)
            })
        })
    };
    assert!(
        wait_until(Duration::from_secs(60), four),
        "not every village decodes four pictures: {:?}\n{}",
        sites(db, None)
            .iter()
            .map(|s| (s.terminal.clone(), s.metrics.get("media.streams").copied()))
            .collect::<Vec<_>>(),
        county.central.log_text()
    );
    std::thread::sleep(Duration::from_secs(2));
    // The meeting ends: the box stops its room, and its file is whole.
    end_and_finish(county, &file);
    assert_eq!(
        media_streams(&file),
        Some(vec!["h264,video,1280,720".into(), "opus,audio".into()])
    );

    // While the meeting ran, the room showed four distinct pictures in its four quarters, none
    // of them missing (dark), each captioned.
    let four_sites = |rgb: &[u8]| -> bool {
        let q = quarters(rgb);
        let distinct = q
            .iter()
            .enumerate()
            .all(|(i, a)| !close(*a, [0, 0, 0]) && q[i + 1..].iter().all(|b| !close(*a, *b)));
        let captioned = [(0, 360), (640, 360), (0, 720), (640, 720)]
            .iter()
            .all(|&(x, y)| white_pixels(rgb, 1280, (x + 12, y - 44), (x + 200, y - 10)) > 30);
        distinct && captioned
    };
    let frames = pictures(&file);
    assert!(
        frames.iter().any(|f| four_sites(f)),
        "no picture of four captioned sites among {}: {:?}",
        frames.len(),
        frames.iter().map(|f| quarters(f)).collect::<Vec<_>>()
    );
}

#[test]
fn central_records_two_minutes_of_a_meeting_that_ffmpeg_plays_whole_with_picture_and_sound() {
    use cuntong_e2e::{MediaCounty, ok};
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let county = MediaCounty::start(d, 2, &[]);
    let id = county.id.as_str();
    let cuntong = |args: &[&str]| county.cuntong(args);
    ok(cuntong(&["meeting", "layout", id, "2x2"]));
    let file = d.join("recordings").join("县务会.mkv");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let out = file.to_str().unwrap();
    ok(cuntong(&["meeting", "record", id, "--out", out]));
    let started = Instant::now();
    let status = ok(cuntong(&["meeting", "status", id]));
    assert!(status.contains(&format!("recording to {out}")), "{status}");
    // One recording of a meeting at a time.
    let again = cuntong(&["meeting", "record", id, "--out", "/tmp/other.mkv"]);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    std::thread::sleep(Duration::from_secs(120));
    ok(cuntong(&["meeting", "record", id, "--stop"]));
    let recorded = started.elapsed().as_secs_f64();
    finished(&file);
    let status = ok(cuntong(&["meeting", "status", id]));
    assert!(!status.contains("recording to"), "{status}");

    // H.264 at the room's size and one mixed sound, as long as it was recorded.
    assert_eq!(
        media_streams(&file),
        Some(vec!["h264,video,1280,720".into(), "opus,audio".into()])
    );
    let length = media_duration(&file).unwrap();
    assert!(
        (recorded - 5.0..=recorded + 1.0).contains(&length),
        "{length} s of a {recorded} s recording"
    );
    // ffmpeg plays it from end to end without an error.
    let played = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&file)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        played.status.success() && played.stderr.is_empty(),
        "{played:?}"
    );
    // A minute in, the chair's and the two villages' pictures (the test camera's ball on
    // black) are in three of the quarters, above their captions; the fourth is empty.
    let rgb = picture_at(&file, 60);
    let lit: Vec<usize> = [(0, 0), (640, 0), (0, 360), (640, 360)]
        .iter()
        .map(|&(x, y)| {
            pixels(&rgb, 1280, (x + 8, y + 8), (x + 632, y + 300), |p| {
                p.iter().any(|c| *c > 100)
            })
        })
        .collect();
    assert_eq!(
        lit.iter().filter(|n| **n > 50).count(),
        3,
        "lit pixels per quarter {lit:?}"
    );
}

/// Whether the large tile of a room in `layout` shows colour bars (content): seven samples
/// across its upper part, of at least five colours, none of them dark.
fn bars_in_large_tile(rgb: &[u8], layout: Layout) -> bool {
    let large = cuntong_core::media::layout::arrange(layout, &[0, 1], 1280, 720)[0].rect;
    let y = (large.y + large.h / 3) as usize;
    let samples: Vec<[u8; 3]> = (0..7)
        .map(|i| {
            let x = (large.x + large.w * (2 * i + 1) / 14) as usize;
            let at = (y * 1280 + x) * 3;
            [rgb[at], rgb[at + 1], rgb[at + 2]]
        })
        .collect();
    let mut colours: Vec<[u8; 3]> = Vec::new();
    for s in &samples {
        if !colours.iter().any(|c| close(*c, *s)) {
            colours.push(*s);
        }
    }
    colours.len() >= 5 && samples.iter().all(|s| !close(*s, [0, 0, 0]))
}

#[test]
fn content_shared_from_a_village_box_fills_every_other_rooms_large_tile_at_its_own_resolution() {
    let _one = one_at_a_time();
    use cuntong_e2e::{bin, ok, run, sites, wait_until};

    let (a, b) = ("130102001001-main", "130102002001-main");
    let (dir, county, file) =
        watched_county(3, cuntong_e2e::COUNTY_RELAY, b, &["--status-sockets"]);
    let d = dir.path();
    let (db, id) = (&county.db, &county.id);
    let villages = county.villages();
    // The operator at a village's box (the simulator keeps each box's data under fleet/).
    let operator = |at: &str, args: &[&str]| {
        let socket = d.join("fleet").join(at).join("status.sock");
        let mut all = args.to_vec();
        all.extend(["--socket", socket.to_str().unwrap()]);
        run(&bin("cuntong-terminal"), &all)
    };
    let answer = |at: &str| -> String {
        let out = operator(at, &["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["meetings"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["id"] == id.as_str()))
            .and_then(|m| m["chair_answer"].as_str())
            .unwrap_or("")
            .to_owned()
    };
    let joined = || {
        let out = county.cuntong(&["meeting", "status", id]);
        String::from_utf8_lossy(&out.stdout)
            .matches(" joined ")
            .count()
            >= 4
    };
    assert!(wait_until(Duration::from_secs(30), joined));

    // Village a shares from its box; the others decode its content at 1920x1080.
    ok(operator(a, &["meeting", "content", id, "on"]));
    assert!(
        wait_until(Duration::from_secs(15), || answer(a) == "content: ok"),
        "answer: {}",
        answer(a)
    );
    let at_1080 = || {
        let all = sites(db, None);
        villages.iter().filter(|v| *v != a).all(|v| {
            all.iter()
                .any(|s| s.terminal == *v && s.metrics.get("media.content") == Some(&1080.0))
        })
    };
    assert!(
        wait_until(Duration::from_secs(60), at_1080),
        "not every other village decodes the content at 1080 lines: {:?}\n{}",
        sites(db, None)
            .iter()
            .map(|s| (s.terminal.clone(), s.metrics.get("media.content").copied()))
            .collect::<Vec<_>>(),
        county.fleet.log_text()
    );
    let status = ok(county.cuntong(&["meeting", "status", id]));
    assert!(status.contains(&format!("content from {a}")), "{status}");

    // Village b's request is refused while a shares.
    ok(operator(b, &["meeting", "content", id, "on"]));
    assert!(
        wait_until(Duration::from_secs(15), || answer(b)
            .contains(&format!("content: refused: {a} is sharing content"))),
        "answer: {}",
        answer(b)
    );
    std::thread::sleep(Duration::from_secs(3));
    end_and_finish(county, &file);

    // Village b's room showed the content's colour bars in its large tile.
    let frames = pictures(&file);
    assert!(
        frames
            .iter()
            .any(|f| bars_in_large_tile(f, Layout::OnePlus(5).with_content())),
        "no content in the large tile among {} pictures",
        frames.len()
    );
}

#[test]
fn in_the_chairs_speaker_layout_every_room_shows_the_site_that_is_heard_large() {
    let _one = one_at_a_time();
    use cuntong_e2e::{ok, sites, wait_until};

    let (x, y, watcher) = (
        "130102001001-main",
        "130102002001-main",
        "130102003001-main",
    );
    // Chaired from a box that takes no part in the media: the villages alone are heard.
    let (_dir, county, file) = watched_county(3, "130102000000-hall", watcher, &[]);
    let (db, id) = (&county.db, &county.id);
    let cuntong = |args: &[&str]| county.cuntong(args);
    ok(cuntong(&["meeting", "layout", id, "speaker"]));
    ok(cuntong(&["meeting", "mute", id, "--all"]));
    ok(cuntong(&["meeting", "unmute", id, x]));
    // Every site on the screen sends: the watcher decodes the three others (and the relay's).
    let decoding = || {
        sites(db, None).iter().any(|s| {
            s.terminal == *watcher
                && s.metrics.get("media.streams").is_some_and(|n| *n >= 3.0)
                && s.metrics.get("media.frames").is_some_and(|f| *f >= 10.0)
        })
    };
    assert!(
        wait_until(Duration::from_secs(60), decoding),
        "{:?}\n{}",
        sites(db, None)
            .iter()
            .map(|s| (s.terminal.clone(), s.metrics.get("media.streams").copied()))
            .collect::<Vec<_>>(),
        county.fleet.log_text()
    );
    // Only x is heard for a while, then only y.
    std::thread::sleep(Duration::from_secs(8));
    ok(cuntong(&["meeting", "unmute", id, y]));
    ok(cuntong(&["meeting", "mute", id, x]));
    std::thread::sleep(Duration::from_secs(8));
    end_and_finish(county, &file);

    // The large tile, twice a second: it settled on one site while x alone was heard, then
    // on another once y alone was, and stayed there to the end.
    let large = cuntong_core::media::layout::arrange(Layout::Speaker, &[0, 1], 1280, 720)[0].rect;
    let (cx, cy) = (
        (large.x + large.w / 2) as usize,
        (large.y + large.h / 3) as usize,
    );
    let mut held: Vec<([u8; 3], usize)> = Vec::new();
    for f in pictures(&file) {
        let c = mean(&f, 1280, cx, cy);
        match held.last_mut() {
            Some((last, n)) if close(*last, c) => *n += 1,
            _ => held.push((c, 1)),
        }
    }
    let settled: Vec<[u8; 3]> = held
        .iter()
        .filter(|(c, n)| *n >= 6 && !close(*c, [0, 0, 0]))
        .map(|(c, _)| *c)
        .collect();
    assert!(
        settled.len() >= 2 && !close(settled[settled.len() - 2], settled[settled.len() - 1]),
        "the large tile did not move from the site heard first to the one heard next: {held:?}"
    );
    let (end, _) = held.last().unwrap();
    assert!(close(*end, *settled.last().unwrap()), "{held:?}");
}
