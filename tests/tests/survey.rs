//! `ferry-agent survey --json` on the build machine: it completes, its JSON reads back
//! as the model's survey, the survey is consistent, and what it could not learn here is
//! named rather than fatal.

use std::process::Command;

use ferry_model::survey::Survey;
use ferry_tests::procs::bin;

#[test]
fn the_build_machine_surveys_itself() {
    let out = Command::new(bin("ferry-agent"))
        .args(["survey", "--json"])
        .output()
        .expect("running ferry-agent survey");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ferry-agent survey failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Survey = serde_json::from_str(&text).expect("the survey JSON reads back");
    assert_eq!(s.validate(), Vec::<String>::new());
    assert!(!s.hostname.is_empty() && !s.kernel.is_empty());
    assert!(s.hardware.cpu.threads >= 1 && !s.hardware.cpu.model.is_empty());
    assert!(s.memory_bytes > 0);
    assert!(!s.nics.is_empty(), "{s:#?}");
    // The build machine is Debian: os-release and the dpkg database are there.
    assert_eq!(s.os.distro.id, "debian");
    assert_eq!(s.apps.package_manager.as_deref(), Some("dpkg"));
    assert!(s.apps.packages.iter().any(|p| p.name == "bash"));
    assert!(s.os.network.interfaces.iter().any(|i| i.kind == "loopback"));
    for g in &s.gaps {
        assert!(!g.what.is_empty() && !g.why.is_empty(), "{g:?}");
    }
}
