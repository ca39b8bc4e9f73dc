//! Names for every code: the official names of division codes shipped with cuntong (province to
//! township), village names imported into the store, a terminal's own name from provisioning,
//! and codes on no list still working as "(unnamed)"; the simulator takes its terminals from
//! the list.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cuntong_e2e::{
    Broker, BrokerKind, bin, central, ok, run, sim_fleet, sim_fleet_with, sites, wait_until,
};
use serde::Deserialize;

/// `cuntong regions show|search --json`, parsed strictly.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Division {
    code: String,
    level: String,
    name: String,
    path: String,
}

fn divisions(args: &[&str]) -> Vec<Division> {
    serde_json::from_str(&ok(run(&bin("cuntong"), args))).expect("regions --json is an array")
}

#[test]
fn a_technician_finds_a_township_by_part_of_its_name_and_sees_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("none.db");
    let db = db.to_str().unwrap();
    let found = divisions(&["regions", "search", "建北", "--json", "--db", db]);
    let jianbei = found
        .iter()
        .find(|d| d.code == "130102001")
        .unwrap_or_else(|| panic!("建北街道 not found: {found:?}"));
    assert_eq!(jianbei.level, "township");
    assert_eq!(jianbei.name, "建北街道");
    assert_eq!(jianbei.path, "河北省 石家庄市 长安区 建北街道");

    let shown = divisions(&["regions", "show", "130102", "--json", "--db", db]);
    assert_eq!(shown[0].name, "长安区");
    assert_eq!(shown[0].level, "county");

    // A code on no list still works, unnamed; a malformed one is refused naming it.
    let unlisted = divisions(&["regions", "show", "130102999", "--json", "--db", db]);
    assert_eq!(unlisted[0].name, "(unnamed)");
    assert_eq!(unlisted[0].path, "河北省 石家庄市 长安区 (unnamed)");
    let bad = run(&bin("cuntong"), &["regions", "show", "1301x", "--db", db]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("1301x"));
}

#[test]
fn sites_carry_official_imported_and_provisioned_names_and_unlisted_codes_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(BrokerKind::Embedded, d);
    let db = d.join("central.db");
    let db_arg = db.to_str().unwrap();
    let central = central(&broker, &db, d);
    // Two villages of 建北街道 and one of a township that is on no list.
    let _villages = sim_fleet(&broker.url, "130102001", 2, d, "villages");
    let _unlisted = sim_fleet(&broker.url, "130102999", 1, d, "unlisted");
    assert!(
        wait_until(Duration::from_secs(30), || sites(&db, None).len() == 3),
        "the fleet did not report: {}",
        central.log_text()
    );
    let by_id = |id: &str| {
        sites(&db, None)
            .into_iter()
            .find(|s| s.terminal == id)
            .unwrap_or_else(|| panic!("{id} missing"))
    };
    let unlisted = by_id("130102999001-main");
    assert_eq!(unlisted.name, "(unnamed)");
    assert_eq!(
        unlisted.region_path,
        "河北省 石家庄市 长安区 (unnamed) (unnamed)"
    );
    // The unlisted township works like any other region.
    assert_eq!(sites(&db, Some("130102999")).len(), 1);
    let village = by_id("130102001001-main");
    assert_eq!(village.name, "(unnamed)", "village names are not shipped");
    assert_eq!(
        village.region_path,
        "河北省 石家庄市 长安区 建北街道 (unnamed)"
    );

    // Village names imported from the national list's CSV.
    let csv = d.join("villages.csv");
    std::fs::write(
        &csv,
        "code,name,streetCode,provinceCode,cityCode,areaCode\n\
         130102001001,\"棉一东社区居民委员会\",130102001,13,1301,130102\n\
         130102001002,\"光华路社区居民委员会\",130102001,13,1301,130102\n",
    )
    .unwrap();
    ok(run(
        &bin("cuntong"),
        &["regions", "import", csv.to_str().unwrap(), "--db", db_arg],
    ));
    let village = by_id("130102001001-main");
    assert_eq!(village.name, "棉一东社区居民委员会");
    assert_eq!(
        village.region_path,
        "河北省 石家庄市 长安区 建北街道 棉一东社区居民委员会"
    );
    // The table shows the names too.
    let table = ok(run(&bin("cuntong"), &["sites", "--db", db_arg]));
    assert!(table.contains("光华路社区居民委员会"), "{table}");

    // A name given at provisioning overrides the official one.
    let ca = d.join("ca");
    ok(run(
        &bin("cuntong"),
        &["ca", "init", "--dir", ca.to_str().unwrap()],
    ));
    ok(run(
        &bin("cuntong"),
        &[
            "provision",
            "130102001002-main",
            "--ca",
            ca.to_str().unwrap(),
            "--broker",
            "mqtts://broker.example:8883",
            "--out",
            d.join("bundle").to_str().unwrap(),
            "--name",
            "光华路村委会议室",
            "--db",
            db_arg,
        ],
    ));
    assert_eq!(by_id("130102001002-main").name, "光华路村委会议室");

    // A bad list is refused naming the line, and nothing of it is stored.
    std::fs::write(&csv, "code,name\n130102001001,甲\n13010200100x,乙\n").unwrap();
    let bad = run(
        &bin("cuntong"),
        &["regions", "import", csv.to_str().unwrap(), "--db", db_arg],
    );
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("line 3") && stderr.contains("13010200100x"),
        "{stderr}"
    );
    assert_eq!(by_id("130102001001-main").name, "棉一东社区居民委员会");
}

#[test]
fn the_simulator_starts_exactly_the_villages_the_list_has_in_the_region() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(BrokerKind::Embedded, d);
    let db = d.join("central.db");
    let central = central(&broker, &db, d);
    let csv = d.join("villages.csv");
    std::fs::write(
        &csv,
        "code,name,streetCode,provinceCode,cityCode,areaCode\n\
         130102001001,\"棉一东社区居民委员会\",130102001,13,1301,130102\n\
         130102001002,\"光华路社区居民委员会\",130102001,13,1301,130102\n\
         130102002003,\"青园社区\",130102002,13,1301,130102\n\
         130104001001,\"另一个区的村\",130104001,13,1301,130104\n\
         110101001001,\"多福巷社区居委会\",110101001,11,1101,110101\n",
    )
    .unwrap();
    let fleet = sim_fleet_with(
        &broker.url,
        "130102",
        1000,
        d,
        "listed",
        &["--codes", csv.to_str().unwrap()],
    );
    let expected = [
        "130102001001-main",
        "130102001002-main",
        "130102002003-main",
    ];
    assert!(
        wait_until(Duration::from_secs(30), || sites(&db, None).len() >= 3),
        "the listed villages did not report: {}\n{}",
        central.log_text(),
        fleet.log_text()
    );
    // The simulator started these three and no others.
    assert!(
        fleet.log_text().contains("terminals=3"),
        "{}",
        fleet.log_text()
    );
    // Written to a file, the log is plain text (no colour codes).
    assert!(!fleet.log_text().contains('\x1b'), "{}", fleet.log_text());
    let mut ids: Vec<String> = sites(&db, None).into_iter().map(|s| s.terminal).collect();
    ids.sort();
    assert_eq!(ids, expected);

    // A region with no village on the list is refused, naming the file and the region.
    let out = run(
        &bin("cuntong-sim"),
        &[
            "fleet",
            "--broker",
            &broker.url,
            "--region",
            "130103",
            "--codes",
            csv.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
}
