//! The basics: mount, write, read back, unmount, SOURCE has the bytes.

use crate::harness::*;
use std::io::Write;

#[test]
fn write_read_unmount_source_matches() {
    let mut m = Mount::new("cache_size=32M");
    let (fstype, source) = mount_entry(&m.mnt).expect("listed in /proc/mounts");
    assert_eq!(fstype, "fuse.extentfs");
    assert_eq!(source, m.src.to_string_lossy());
    let mut rng = Rng(1);
    let mut data = vec![0u8; 5 << 20];
    rng.fill(&mut data);
    {
        let mut f = std::fs::File::create(m.path("f")).unwrap();
        f.write_all(&data).unwrap();
    }
    assert_eq!(std::fs::read(m.path("f")).unwrap(), data);
    let st = m.unmount();
    assert!(st.success(), "exit status {st}");
    assert_eq!(std::fs::read(m.src_path("f")).unwrap(), data);
}
