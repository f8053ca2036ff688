//! A full disk and an unwritable data directory give a clear error and refuse writes rather
//! than acknowledging what cannot be kept. Uses real tmpfs mounts (the tests run as root).

use std::path::{Path, PathBuf};
use std::process::Command;

use tally_e2e::{Server, events};
use tally_wire::{ClientError, IngestClient, Table};

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (the test command runs as root)"
        );
        Tmpfs(path.to_path_buf())
    }

    fn grow(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn remount_read_only(&self) {
        let status = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "remount read-only");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_and_keeps_every_acknowledged_row() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mount = Tmpfs::mount(&data, "6m");
    // No flush during the test: the write-ahead log grows until the disk is full.
    let server = Server::start(
        &data,
        &[
            "--insecure",
            "--flush-interval",
            "1h",
            "--flush-rows",
            "100000000",
        ],
    )
    .unwrap();
    let mut client = IngestClient::connect(&server.flight_url, None)
        .await
        .unwrap();
    let mut acknowledged = Vec::new();
    let mut refusal = None;
    for i in 0..2_000 {
        let id = format!("fill-{i:05}");
        match client
            .write(Table::Events, vec![events(&id, i * 1_000, 500)])
            .await
        {
            Ok(_) => acknowledged.push(id),
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let refusal = refusal.expect("6 MiB must run out");
    let ClientError::Refused(status) = refusal.source else {
        panic!("{refusal}")
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    assert!(status.message().contains("out of space"), "{status}");
    assert!(
        acknowledged.len() > 5,
        "some writes succeeded before the disk filled"
    );

    // Every acknowledged batch is there, before and after a restart on the full disk.
    let present = crate::rows_per_pod(&server.http_url).await;
    for id in &acknowledged {
        assert_eq!(present.get(id), Some(&500), "{id}");
    }
    server.kill9();
    // The operator grows the volume, and the appliance starts again with everything.
    mount.grow("64m");
    let server = match Server::start(&data, &["--insecure"]) {
        Ok(server) => server,
        Err(e) => panic!("restart on the full disk: {e}"),
    };
    let present = crate::rows_per_pod(&server.http_url).await;
    for id in &acknowledged {
        assert_eq!(present.get(id), Some(&500), "{id} after restart");
    }
    server.kill9();
    drop(mount);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_data_directory_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mount = Tmpfs::mount(&data, "16m");

    // A store that was written to, then its volume read-only: the appliance does not start,
    // and says why, rather than accept writes it cannot keep.
    let server = Server::start(&data, &["--insecure"]).unwrap();
    let mut client = IngestClient::connect(&server.flight_url, None)
        .await
        .unwrap();
    client
        .write(Table::Events, vec![events("before", 0, 10)])
        .await
        .unwrap();
    server.kill9();
    mount.remount_read_only();
    let err = match Server::start(&data, &["--insecure"]) {
        Ok(_) => panic!("started on a read-only data directory"),
        Err(e) => e,
    };
    assert!(
        err.contains("cannot write to") && err.contains("Read-only file system"),
        "{err}"
    );
    drop(mount);
}
