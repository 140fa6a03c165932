//! Bad input on the ramdisk's console: an agent config that does not parse, a
//! `ferry.*` parameter that makes no sense, and a store nobody answers at. Each must
//! give a clear console message while init keeps the machine up — never a kernel
//! panic from init exiting.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use ferry_tests::vm::{MAC, Qemu, base_args, ramdisk};

/// Boots the ramdisk with `config` put in front of it and `append` on the command line.
fn boot(work: &Path, r: &Path, config: &str, append: &str) -> Result<Qemu> {
    let mut initrd = ferry_initramfs::cpio::config_overlay(config);
    initrd.extend(std::fs::read(r.join("initrd.zst"))?);
    let path = work.join("initrd");
    std::fs::write(&path, initrd)?;
    let console = work.join("console.log");
    let mut args = base_args(work, &console)?;
    args.extend([
        "-kernel".into(),
        r.join("vmlinuz").to_string_lossy().into(),
        "-initrd".into(),
        path.to_string_lossy().into(),
        "-append".into(),
        format!("console=ttyS0,115200 panic=-1 {append}"),
        "-netdev".into(),
        "user,id=n0".into(),
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={MAC}"),
    ]);
    Qemu::start(work, &console, &args, None)
}

/// The machine must still be running, and must not have panicked.
async fn still_up(vm: &mut Qemu) {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let console = vm.console();
    assert!(!console.contains("Kernel panic"), "{}", vm.tail());
    assert!(
        vm.wait_exit(Duration::from_millis(100)).await.is_err(),
        "the VM ended:\n{}",
        vm.tail()
    );
}

#[tokio::test]
async fn a_config_that_does_not_parse_is_named_on_the_console() -> Result<()> {
    let Some(r) = ramdisk() else { return Ok(()) };
    let work = tempfile::tempdir()?;
    let mut vm = boot(work.path(), &r, "store: [unclosed\n", "ferry.ip=nonsense")?;
    vm.wait_console(
        "agent config /etc/ferry/agent.yaml does not parse",
        Duration::from_secs(180),
    )
    .await?;
    // The bad parameter is named too, and DHCP was used instead.
    assert!(
        vm.console()
            .contains("kernel parameter ferry.ip=\"nonsense\" is not valid"),
        "{}",
        vm.tail()
    );
    still_up(&mut vm).await;
    Ok(())
}

#[tokio::test]
async fn an_unreachable_store_is_retried_not_fatal() -> Result<()> {
    let Some(r) = ramdisk() else { return Ok(()) };
    let work = tempfile::tempdir()?;
    // A port nobody listens on, and a manager key that parses.
    let port = ferry_tests::util::free_port();
    let key = ferry_mailbox::seal::KeyPair::generate().sign_public();
    let config = format!(
        "store:\n  url: s3+http://10.0.2.2:{port}/ferry\n  access_key: a\n  secret_key: b\nmanager_key: {key}\nheartbeat_secs: 2\npoll_secs: 1\n"
    );
    let mut vm = boot(work.path(), &r, &config, "")?;
    vm.wait_console("retrying in", Duration::from_secs(180))
        .await?;
    assert!(
        vm.console().contains(&format!("10.0.2.2:{port}")),
        "{}",
        vm.tail()
    );
    still_up(&mut vm).await;
    Ok(())
}
