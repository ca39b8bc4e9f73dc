//! Fuzzes the meeting decoders: desired states, screens, site uplinks and host downlinks, and
//! feeds whatever decodes to the state machines, which must never panic on it.
#![no_main]

use cuntong_core::envelope::encode;
use cuntong_core::meeting::host::{Host, HostConfig};
use cuntong_core::meeting::participant::{Input, Participant, ParticipantConfig};
use cuntong_core::meeting::{Downlink, MeetingState, Screen, Uplink};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let me = "130102001001-main".parse().expect("a valid id");
    let mut site = Participant::new(me, ParticipantConfig::default());
    if let Ok(state) = MeetingState::decode(data) {
        let again = encode(&state).expect("a decoded state encodes");
        assert_eq!(MeetingState::decode(&again), Ok(state.clone()));
        let (mut host, _) = Host::new(state.spec.clone(), HostConfig::default(), vec![0; 30], 1);
        let _ = host.tick(2);
        let _ = site.handle(Input::State(Box::new(state)), 3);
    }
    if let Ok(screen) = Screen::decode(data) {
        // Either shape, with or without content, reads back the same.
        for again in [
            encode(&screen).expect("a decoded screen encodes"),
            screen.encode().expect("a decoded screen encodes"),
        ] {
            assert_eq!(Screen::decode(&again), Ok(screen.clone()));
        }
        let shown = screen.layout.map_or(usize::MAX, |l| l.tiles());
        assert!(screen.tiles_for(&me).count() <= shown);
        let _ = screen.tiles.iter().chain(&screen.content).map(|t| t.caption()).count();
    }
    if let Ok(up) = Uplink::decode(data) {
        let again = encode(&up).expect("a decoded uplink encodes");
        assert_eq!(Uplink::decode(&again), Ok(up));
    }
    if let Ok(down) = Downlink::decode(data) {
        let _ = site.handle(Input::Downlink(down), 4);
    }
});
