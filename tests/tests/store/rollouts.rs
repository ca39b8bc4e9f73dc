//! Rollouts and their boxes, read back alike on both backends.

use super::*;

#[test]
fn rollouts_their_boxes_and_the_count_at_each_stage_read_back_alike_on_both_backends() {
    use cuntong::store::RolloutRow;
    use cuntong_core::rollout::{Plan, Site, State};
    use cuntong_core::update::Stage;
    let row = |id: u64| RolloutRow {
        plan: Plan {
            id,
            version: format!("0.{id}.0"),
            region: "130102".parse().unwrap(),
            rate_per_min: 50,
            abort_failed_percent: 10,
            min_executed: 20,
            window: None,
            timeout_ms: 7_200_000,
            expires_ms: T0 + DAY,
            created_ms: T0,
        },
        state: State::Running,
        reason: String::new(),
        command: vec![id as u8; 3],
        updated_ms: T0,
    };
    let site = |stage: Stage| Site {
        stage,
        bytes: 7,
        reason: String::new(),
        notified_ms: None,
        updated_ms: T0,
    };
    let boxes = |n: u32| id(&format!("130102001{n:03}-main"));
    let results = on_both(|db| {
        let mut store = db.open();
        let sites = vec![
            (1, boxes(1), site(Stage::Queued)),
            (1, boxes(2), site(Stage::Queued)),
            (1, boxes(3), site(Stage::Committed)),
            (2, boxes(1), site(Stage::Failed)),
        ];
        store
            .save_rollouts(&[row(1), row(2)], &sites, None)
            .unwrap();
        // A box moves on: its row is replaced, not added.
        store
            .save_rollouts(&[], &[(1, boxes(2), site(Stage::Downloading))], None)
            .unwrap();
        let mut counts = store.rollout_counts().unwrap();
        counts.sort_by_key(|(r, s, _)| (*r, s.as_str()));
        let ids: Vec<u64> = store
            .rollouts()
            .unwrap()
            .iter()
            .map(|r| r.plan.id)
            .collect();
        let one = store.rollout_sites(1).unwrap();
        assert_eq!(one.len(), 3, "{}", db.name);
        assert_eq!(one[&boxes(2)].stage, Stage::Downloading, "{}", db.name);
        (ids, counts)
    });
    assert_eq!(results[0].0, vec![1, 2]);
    assert_eq!(
        results[0].1,
        vec![
            (1, Stage::Committed, 1),
            (1, Stage::Downloading, 1),
            (1, Stage::Queued, 1),
            (2, Stage::Failed, 1),
        ]
    );
    assert_eq!(results[0], results[1], "SQLite and PostgreSQL differ");
}
