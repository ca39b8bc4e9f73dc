//! What the backends are chosen by: a `postgres://` URL or a file, never a password shown.

use super::*;

#[test]
fn a_postgres_url_is_postgresql_and_anything_else_a_file_and_no_password_is_ever_shown() {
    let db: Database = "postgres://cuntong:s3cret@db.example:5432/central"
        .parse()
        .unwrap();
    assert!(matches!(&db, Database::Postgres(u) if u.contains("s3cret")));
    assert_eq!(
        db.to_string(),
        "postgres://cuntong:***@db.example:5432/central"
    );
    assert!(!format!("{db:?}").contains("s3cret"));
    let db: Database = "postgresql://u@h/d?password=hunter2".parse().unwrap();
    assert!(matches!(db, Database::Postgres(_)));
    assert!(!db.to_string().contains("hunter2"), "{db}");
    let db: Database = "/var/lib/cuntong/central.db".parse().unwrap();
    assert_eq!(db, Database::Sqlite("/var/lib/cuntong/central.db".into()));
    let db: Database = "postgres.db".parse().unwrap();
    assert!(matches!(db, Database::Sqlite(_)));
    // An unreachable server's error names it, without the password.
    let port = cuntong_e2e::free_port();
    let url = format!("postgres://u:s3cret@127.0.0.1:{port}/d");
    let err = url.parse::<Database>().unwrap().open().err().unwrap();
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}
