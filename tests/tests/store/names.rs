//! The official names: imported, given to terminals, read by region.

use super::*;

#[test]
fn names_imported_and_given_to_terminals_are_read_back_and_bump_the_version() {
    use cuntong_core::site::SiteCode;
    let code: SiteCode = "130102001001".parse().unwrap();
    let county: SiteCode = "130102000000".parse().unwrap();
    let rows = [
        (code, "旧名".to_owned()),
        (county, "长安区".to_owned()),
        (code, "东村".to_owned()),
    ];
    // SQLite.
    let dir = tempfile::tempdir().unwrap();
    let mut lite = SqliteStore::open(&dir.path().join("central.db")).unwrap();
    // PostgreSQL.
    let mut pg = PgStore::open(&Postgres::shared().fresh_database()).unwrap();
    assert_eq!(lite.names_version().unwrap(), 0);
    assert_eq!(pg.names_version().unwrap(), 0);
    assert_eq!(lite.import_names(&rows).unwrap(), 3);
    assert_eq!(pg.import_names(&rows).unwrap(), 3);
    lite.set_terminal_name(&id(A), "村委会").unwrap();
    pg.set_terminal_name(&id(A), "村委会").unwrap();
    assert_eq!(lite.names_version().unwrap(), 2);
    assert_eq!(pg.names_version().unwrap(), 2);
    for names in [lite.names(None).unwrap(), pg.names(None).unwrap()] {
        assert_eq!(names.lookup(&code), Some("东村"));
        assert_eq!(names.lookup(&county), Some("长安区"));
        assert_eq!(names.terminal(&id(A)), "村委会");
        assert_eq!(names.path(&code), lite.names(None).unwrap().path(&code));
    }
}

#[test]
fn a_regions_reader_gets_the_names_in_it_and_above_it_and_no_others() {
    use cuntong_core::site::{Region, SiteCode};
    let code = |s: &str| s.parse::<SiteCode>().unwrap();
    let (village, town, county) = (
        code("130102001001"),
        code("130102001000"),
        code("130102000000"),
    );
    let (next_town, elsewhere) = (code("130102002001"), code("440106001001"));
    let rows: Vec<(SiteCode, String)> = [
        (village, "东村"),
        (town, "建北街道"),
        (county, "长安区"),
        (next_town, "西村"),
        (elsewhere, "南村"),
    ]
    .into_iter()
    .map(|(c, n)| (c, n.to_owned()))
    .collect();
    let other = "440106001001-main";
    let dir = tempfile::tempdir().unwrap();
    let mut lite = SqliteStore::open(&dir.path().join("central.db")).unwrap();
    let mut pg = PgStore::open(&Postgres::shared().fresh_database()).unwrap();
    for store in [&mut lite as &mut dyn Store, &mut pg] {
        store.import_names(&rows).unwrap();
        store.set_terminal_name(&id(A), "村委会").unwrap();
        store.set_terminal_name(&id(other), "南村委").unwrap();
        let scope = "130102001".parse::<Region>().unwrap();
        let names = store.names(Some(&scope)).unwrap();
        assert_eq!(names.lookup(&village), Some("东村"));
        assert_eq!(names.lookup(&town), Some("建北街道"));
        assert_eq!(
            names.lookup(&county),
            Some("长安区"),
            "an ancestor's imported name"
        );
        assert_eq!(names.lookup(&next_town), None, "a village of another town");
        assert_eq!(names.lookup(&elsewhere), None);
        assert_eq!(names.terminal(&id(A)), "村委会");
        assert_eq!(names.terminal(&id(other)), "(unnamed)");
        // The whole province and the whole country.
        let province = store.names(Some(&"13".parse::<Region>().unwrap())).unwrap();
        assert_eq!(province.lookup(&next_town), Some("西村"));
        assert_eq!(province.lookup(&elsewhere), None);
        let all = store.names(None).unwrap();
        assert_eq!(all.lookup(&elsewhere), Some("南村"));
        assert_eq!(all.terminal(&id(other)), "南村委");
    }
}

#[test]
fn reading_a_store_central_never_set_up_names_where_it_looked_and_creates_nothing() {
    // SQLite: a missing file, or an empty one.
    let db = sqlite();
    let err = db.database.open_read_only().err().unwrap();
    assert!(matches!(err, StoreError::Missing { .. }), "{err:?}");
    assert!(
        err.to_string().contains("no store at") && err.to_string().contains("central.db"),
        "error should say there is no store and name the file: {err}"
    );
    assert!(!db.path().exists());
    // A file central never set up (here: empty) is no store either, and stays untouched.
    std::fs::write(db.path(), b"").unwrap();
    let err = db.database.open_read_only().err().unwrap();
    assert!(matches!(err, StoreError::Missing { .. }), "{err:?}");
    assert_eq!(std::fs::metadata(db.path()).unwrap().len(), 0);
    // A directory is not a store.
    let dir = Database::Sqlite(db.path().parent().unwrap().to_owned());
    let err = dir.open_read_only().err().unwrap();
    assert!(matches!(err, StoreError::Missing { .. }), "{err:?}");
    // PostgreSQL: an empty database stays empty.
    let db = postgres();
    let err = db.database.open_read_only().err().unwrap();
    assert!(matches!(err, StoreError::Missing { .. }), "{err:?}");
    assert!(err.to_string().contains(db.url()), "{err}");
    assert_eq!(
        db.scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"),
        0
    );
    // And a read-only store refuses to write.
    drop(db.open());
    let mut read = db.database.open_read_only().unwrap();
    let err = read.apply(&[presence(A, true, T0)]).unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
}
