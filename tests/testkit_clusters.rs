//! The test-cluster support itself: clusters of each chosen version start with the
//! settings logical replication needs, survive a crash restart, and vanish on drop.

use pgmesh::testkit::{versions_under_test, Cluster};

#[test]
fn clusters_start_configured_for_logical_replication() {
    for major in versions_under_test() {
        let c = Cluster::start(major).unwrap_or_else(|e| panic!("PG{major}: {e}"));
        let num: u32 = c.psql("SHOW server_version_num").unwrap().parse().unwrap();
        assert_eq!(num / 10000, major);
        assert_eq!(c.psql("SHOW wal_level").unwrap(), "logical");
        assert_eq!(c.psql("SHOW track_commit_timestamp").unwrap(), "on");
        c.psql("CREATE TABLE t(id int primary key); INSERT INTO t VALUES (1)")
            .unwrap();
        c.restart_immediate().unwrap();
        assert_eq!(c.psql("SELECT count(*) FROM t").unwrap(), "1");
        let dir = c.data_dir().to_path_buf();
        drop(c);
        assert!(!dir.exists(), "data dir removed on drop");
    }
}

#[test]
fn parallel_clusters_get_distinct_ports() {
    let major = versions_under_test()[0];
    let a = Cluster::start(major).unwrap();
    let b = Cluster::start(major).unwrap();
    assert_ne!(a.port(), b.port());
    assert_eq!(a.psql("SELECT 1").unwrap(), "1");
    assert_eq!(b.psql("SELECT 1").unwrap(), "1");
}
