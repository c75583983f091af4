//! Coherence with a shared SOURCE (close-to-open, as NFS), both cache modes: two mounts of
//! one SOURCE as two clients, changes made in SOURCE between opens and while a file is held
//! open, a foreign append followed by an append through the mount, dirty data kept across a
//! foreign change, and `ctl drop` refreshing a file under `coherence=none`.
//!
//! Waits for something that must happen "within the attribute timeout" poll with a generous
//! deadline (a liveness bound, not a timing assertion).

use crate::harness::*;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

const MODES: [&str; 2] = ["cache=pool", "cache=kernel"];

fn read_all(p: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    File::open(p)
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
        .read_to_end(&mut v)
        .unwrap();
    v
}

/// Write `data` as the whole of `p` in one open/write/close.
fn write_file(p: &Path, data: &[u8]) {
    let mut f = File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    f.write_all(data).unwrap();
}

fn append(p: &Path, data: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(p).unwrap();
    f.write_all(data).unwrap();
}

/// Poll `f` until it is true; panics with `what` after 10 s.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "never happened: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Set `p`'s atime and mtime to `(sec, nsec)` (ctime moves to now).
fn set_times(p: &Path, sec: i64, nsec: i64) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let t = libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    // SAFETY: `c` is a NUL-terminated CString, and the temporary array holds exactly the two
    // timespecs utimensat reads; both live until the end of the statement.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), 0) };
    assert_eq!(r, 0, "utimensat {}", p.display());
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    random_bytes(&mut rng, len)
}

#[test]
fn two_mounts_see_each_others_writes_at_open() {
    for mode in MODES {
        let m1 = Mount::new(mode);
        let m2 = m1.second(mode);
        // Write and close on one client; open and read on the other.
        let a = pattern(1, 3 * MIB as usize + 123);
        write_file(&m1.path("twin"), &a);
        check_bytes(
            &format!("{mode}: m2 after m1's close"),
            &read_all(&m2.path("twin")),
            &a,
        );
        // And back: a same-size rewrite through the other client.
        let b = pattern(2, a.len());
        write_file(&m2.path("twin"), &b);
        check_bytes(
            &format!("{mode}: m1 after m2's close"),
            &read_all(&m1.path("twin")),
            &b,
        );
        // Appends on both sides, alternately.
        append(&m1.path("twin"), b"one");
        append(&m2.path("twin"), b"two");
        let mut want = b.clone();
        want.extend_from_slice(b"onetwo");
        check_bytes(
            &format!("{mode}: m1 after appends"),
            &read_all(&m1.path("twin")),
            &want,
        );
        check_bytes(
            &format!("{mode}: SOURCE after appends"),
            &read_all(&m1.src_path("twin")),
            &want,
        );
        // Nothing was written over without being acknowledged: the size agrees everywhere.
        let f = File::open(m2.path("twin")).unwrap();
        assert_eq!(f.metadata().unwrap().len(), want.len() as u64, "{mode}");
    }
}

#[test]
fn source_changes_are_seen_at_the_next_open() {
    for mode in MODES {
        let m = Mount::new(mode);
        let (mp, sp) = (m.path("f"), m.src_path("f"));
        write_file(&sp, b"aaaa-first");
        assert_eq!(read_all(&mp), b"aaaa-first", "{mode}");

        // A same-size rewrite that restores the old mtime: only ctime moved.
        let st = std::fs::metadata(&sp).unwrap();
        write_file(&sp, b"bbbb-other");
        set_times(&sp, st.mtime(), st.mtime_nsec());
        assert_eq!(std::fs::metadata(&sp).unwrap().len(), st.len());
        assert_eq!(read_all(&mp), b"bbbb-other", "{mode}: same-size rewrite");

        // Append and truncate: the new size comes with the open.
        append(&sp, b"+tail");
        let f = File::open(&mp).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 15, "{mode}: size after append");
        drop(f);
        assert_eq!(read_all(&mp), b"bbbb-other+tail", "{mode}: append");
        OpenOptions::new()
            .write(true)
            .open(&sp)
            .unwrap()
            .set_len(4)
            .unwrap();
        let f = File::open(&mp).unwrap();
        assert_eq!(
            f.metadata().unwrap().len(),
            4,
            "{mode}: size after truncate"
        );
        drop(f);
        assert_eq!(read_all(&mp), b"bbbb", "{mode}: truncate");

        // Replaced by a rename in SOURCE: the next open finds the new file.
        write_file(&m.src_path("f.new"), b"replacement");
        std::fs::rename(m.src_path("f.new"), &sp).unwrap();
        assert_eq!(read_all(&mp), b"replacement", "{mode}: replaced by rename");

        // Deleted in SOURCE: the next open fails as on the backing directory.
        std::fs::remove_file(&sp).unwrap();
        let e = File::open(&mp).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{mode}: deleted: {e}");

        // chmod in SOURCE shows within the attribute timeout.
        write_file(&sp, b"mode");
        assert_eq!(read_all(&mp), b"mode");
        std::fs::set_permissions(&sp, std::fs::Permissions::from_mode(0o600)).unwrap();
        eventually(&format!("{mode}: chmod in SOURCE shows"), || {
            std::fs::metadata(&mp).unwrap().permissions().mode() & 0o777 == 0o600
        });
        // A delete shows within it too, without an open.
        std::fs::remove_file(&sp).unwrap();
        eventually(&format!("{mode}: delete in SOURCE shows"), || {
            std::fs::metadata(&mp).is_err()
        });
        let stats = getxattr(&m.mnt, "user.extentfs.stats").unwrap();
        assert!(stat(&stats, "source_changes") >= 5, "{mode}: {stats}");
        assert!(stat(&stats, "revalidations") >= stat(&stats, "source_changes"));
    }
}

#[test]
fn foreign_append_then_append_through_the_mount_keeps_both() {
    for mode in MODES {
        let m = Mount::new(mode);
        let (mp, sp) = (m.path("log"), m.src_path("log"));
        write_file(&sp, b"A");
        assert_eq!(read_all(&mp), b"A");
        append(&sp, b"B");
        append(&mp, b"C");
        assert_eq!(read_all(&sp), b"ABC", "{mode}: SOURCE");
        assert_eq!(read_all(&mp), b"ABC", "{mode}: mount");
        // Many lines from both writers, interleaved, one open each.
        let mut want = b"ABC".to_vec();
        for i in 0..31 {
            let (p, who) = if i % 2 == 0 {
                (&sp, "src")
            } else {
                (&mp, "mnt")
            };
            let line = format!("line {i} from {who}\n");
            append(p, line.as_bytes());
            want.extend_from_slice(line.as_bytes());
        }
        check_bytes(&format!("{mode}: SOURCE log"), &read_all(&sp), &want);
        check_bytes(&format!("{mode}: mount log"), &read_all(&mp), &want);
    }
}

#[test]
fn a_file_held_open_sees_changes_within_the_timeout() {
    for mode in MODES {
        let m = Mount::new(mode);
        let sp = m.src_path("held");
        write_file(&sp, b"version one");
        let f = File::open(m.path("held")).unwrap();
        assert_eq!(read_at_full(&f, 0, 64), b"version one");
        write_file(&sp, b"version two, longer");
        eventually(&format!("{mode}: held-open file sees the change"), || {
            read_at_full(&f, 0, 64) == b"version two, longer"
        });
    }
}

#[test]
fn strict_reads_see_a_change_at_once() {
    for mode in MODES {
        let m = Mount::new(&format!("{mode},coherence=strict"));
        let sp = m.src_path("log");
        write_file(&sp, b"line 1\n");
        let f = File::open(m.path("log")).unwrap();
        assert_eq!(read_at_full(&f, 0, 64), b"line 1\n");
        for i in 2..6 {
            append(&sp, format!("line {i}\n").as_bytes());
            let want: String = (1..=i).map(|k| format!("line {k}\n")).collect();
            // No wait: the very next read sees it.
            assert_eq!(
                String::from_utf8(read_at_full(&f, 0, 256)).unwrap(),
                want,
                "{mode}"
            );
        }
    }
}

#[test]
fn dirty_data_survives_a_foreign_change_of_other_bytes() {
    for mode in MODES {
        let opts = format!("{mode},dirty_expire=60m");
        let m = Mount::with_source(&opts, |s| {
            std::fs::write(s.join("f"), vec![b'.'; 64 * KIB as usize]).unwrap();
        });
        let (mp, sp) = (m.path("f"), m.src_path("f"));
        let w = OpenOptions::new().read(true).write(true).open(&mp).unwrap();
        assert_eq!(read_at_full(&w, 0, 8), b"........");
        // Through the mount: a whole page and a few bytes of another, not yet written back.
        w.write_all_at(&[b'M'; 4096], 0).unwrap();
        w.write_all_at(b"mmmm", 8192 + 10).unwrap();
        // Someone else writes other bytes of SOURCE, one of them in that partly dirty page.
        let s = OpenOptions::new().write(true).open(&sp).unwrap();
        s.write_all_at(b"SSSS", 8192 + 100).unwrap();
        s.write_all_at(&[b'S'; 4096], 32 * KIB).unwrap();
        drop(s);
        // A second open revalidates: the mount's bytes win where it wrote, SOURCE's elsewhere.
        let r = File::open(&mp).unwrap();
        let got = read_at_full(&r, 0, 64 * KIB as usize);
        let mut want = vec![b'.'; 64 * KIB as usize];
        want[..4096].fill(b'M');
        want[8192 + 10..8192 + 14].copy_from_slice(b"mmmm");
        want[8192 + 100..8192 + 104].copy_from_slice(b"SSSS");
        want[32 * KIB as usize..36 * KIB as usize].fill(b'S');
        check_bytes(&format!("{mode}: mount after the conflict"), &got, &want);
        drop(r);
        drop(w);
        check_bytes(
            &format!("{mode}: SOURCE after close"),
            &read_all(&sp),
            &want,
        );
        let stats = getxattr(&m.mnt, "user.extentfs.stats").unwrap();
        assert!(stat(&stats, "coherence_conflicts") >= 1, "{mode}: {stats}");
    }
}

#[test]
fn ctl_drop_refreshes_bytes_and_size() {
    // Under cache=kernel,coherence=none the kernel caches writes (writeback-cache mode) and
    // keeps its own size of a regular file whatever the daemon says: there `drop` refreshes
    // the bytes only (docs/usage.md), so that combination is not in this test.
    for opts in [
        "cache=pool,coherence=none",
        "cache=kernel,coherence=cto,attr_timeout=60s",
    ] {
        let mode = opts;
        let m = Mount::new(opts);
        let (mp, sp) = (m.path("f"), m.src_path("f"));
        write_file(&sp, b"short");
        assert_eq!(read_all(&mp), b"short");
        write_file(&sp, b"longer and different");
        setxattr(&mp, "user.extentfs.ctl", b"drop").unwrap();
        let f = File::open(&mp).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 20, "{mode}: size after drop");
        assert_eq!(read_at_full(&f, 0, 64), b"longer and different", "{mode}");
        let per_file = getxattr(&mp, "user.extentfs.stats").unwrap();
        assert!(per_file.contains("validator=dev="), "{per_file}");
    }
}

#[test]
fn writes_through_the_mount_are_not_mistaken_for_foreign_changes() {
    for mode in MODES {
        let m = Mount::new(mode);
        let mp = m.path("own");
        let data = pattern(3, 2 * MIB as usize);
        write_file(&mp, &data);
        // Re-reads after our own writeback, chmod, utimens, rename and link find nothing
        // changed: the cached data stays.
        assert_eq!(read_all(&mp), data);
        std::fs::set_permissions(&mp, std::fs::Permissions::from_mode(0o640)).unwrap();
        set_times(&mp, 1_000_000, 5);
        std::fs::rename(&mp, m.path("own2")).unwrap();
        std::fs::hard_link(m.path("own2"), m.path("own3")).unwrap();
        let mut w = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_APPEND)
            .open(m.path("own2"))
            .unwrap();
        w.write_all(b"end").unwrap();
        drop(w);
        let before = getxattr(&m.mnt, "user.extentfs.stats").unwrap();
        let mut want = data.clone();
        want.extend_from_slice(b"end");
        assert_eq!(read_all(&m.path("own3")), want);
        let after = getxattr(&m.mnt, "user.extentfs.stats").unwrap();
        assert_eq!(
            stat(&after, "source_changes"),
            stat(&before, "source_changes"),
            "{mode}: own changes counted as foreign"
        );
        assert_eq!(stat(&after, "source_changes"), 0, "{mode}: {after}");
    }
}

/// A real network filesystem as SOURCE: a private sshd on 127.0.0.1 (its own host key, client
/// key and port) and an sshfs mount of one of its directories. Dropping it unmounts sshfs and
/// stops sshd by its PID.
struct SshfsSource {
    dir: tempfile::TempDir,
    sshd: Option<std::process::Child>,
    mounted: bool,
}

impl SshfsSource {
    /// The directory as the server sees it ("the server side").
    fn server(&self) -> std::path::PathBuf {
        self.dir.path().join("server")
    }

    /// The sshfs mount point (extentfs's SOURCE).
    fn mnt(&self) -> std::path::PathBuf {
        self.dir.path().join("sshfs")
    }

    fn start() -> SshfsSource {
        use std::process::{Command, Stdio};
        let dir = tempfile::Builder::new()
            .prefix("extentfs-sshfs-")
            .tempdir()
            .unwrap();
        let mut me = SshfsSource {
            dir,
            sshd: None,
            mounted: false,
        };
        let d = me.dir.path().to_path_buf();
        std::fs::create_dir(me.server()).unwrap();
        std::fs::create_dir(me.mnt()).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        for k in ["host_key", "key"] {
            let st = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", ""])
                .arg("-f")
                .arg(d.join(k))
                .status()
                .expect("ssh-keygen (openssh-client) is needed: scripts/install-deps.sh");
            assert!(st.success(), "ssh-keygen {k}");
        }
        std::fs::copy(d.join("key.pub"), d.join("authorized_keys")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\n\
             PidFile {pid}\nStrictModes no\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             Subsystem sftp internal-sftp\n",
            hk = d.join("host_key").display(),
            ak = d.join("authorized_keys").display(),
            pid = d.join("sshd.pid").display(),
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        let sshd = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("/usr/sbin/sshd (openssh-server) is needed: scripts/install-deps.sh");
        me.sshd = Some(sshd);
        eventually("sshd listens", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let opts = format!(
            "IdentityFile={},StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,\
             BatchMode=yes,dir_cache=no,attr_timeout=0,entry_timeout=0",
            d.join("key").display()
        );
        let st = Command::new("sshfs")
            .arg("-p")
            .arg(port.to_string())
            .arg("-o")
            .arg(opts)
            .arg(format!("root@127.0.0.1:{}", me.server().display()))
            .arg(me.mnt())
            .status()
            .expect("sshfs is needed: scripts/install-deps.sh");
        assert!(st.success(), "sshfs mount failed");
        me.mounted = true;
        me
    }
}

impl Drop for SshfsSource {
    fn drop(&mut self) {
        if self.mounted && is_mounted(&self.mnt()) && !umount(&self.mnt()) {
            umount_lazy(&self.mnt());
        }
        if let Some(mut sshd) = self.sshd.take() {
            let _ = sshd.kill();
            let _ = sshd.wait();
        }
    }
}

#[test]
fn sshfs_source_changed_on_the_server() {
    let ssh = SshfsSource::start();
    for mode in MODES {
        let server = ssh.server().join(format!("remote-{}", &mode[6..]));
        let name = server.file_name().unwrap().to_str().unwrap().to_string();
        let m = Mount::on(&ssh.mnt(), mode);
        write_file(&server, b"from the server, one");
        assert_eq!(read_all(&m.path(&name)), b"from the server, one", "{mode}");
        // Changed on the server: a new size...
        write_file(&server, b"from the server, version two");
        assert_eq!(
            read_all(&m.path(&name)),
            b"from the server, version two",
            "{mode}"
        );
        // ...and a same-size rewrite whose mtime differs in whole seconds (SFTP carries
        // no nanoseconds and no ctime: a same-size rewrite within one second is invisible
        // through sshfs, see docs/coherence.md).
        let st = std::fs::metadata(&server).unwrap();
        write_file(&server, b"FROM THE SERVER, VERSION TWO");
        set_times(&server, st.mtime() + 10, 0);
        assert_eq!(
            read_all(&m.path(&name)),
            b"FROM THE SERVER, VERSION TWO",
            "{mode}"
        );
        // Appended on the server, then through the mount: both stay.
        append(&server, b" +server");
        append(&m.path(&name), b" +mount");
        assert_eq!(
            read_all(&server),
            b"FROM THE SERVER, VERSION TWO +server +mount",
            "{mode}: server side"
        );
        // Written through the mount: on the server once closed.
        write_file(&m.path("from-client"), b"written through extentfs");
        assert_eq!(
            read_all(&ssh.server().join("from-client")),
            b"written through extentfs"
        );
        std::fs::remove_file(ssh.server().join("from-client")).unwrap();
        drop(m);
    }
}
