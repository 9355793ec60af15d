//! Server key rotation keeps the apps' backup pin: an interrupted rotation is finished by
//! `renew-server`, never repeated by a second rotation, and `--expect-next` refuses to
//! promote a key whose pin the apps do not carry.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use coffer::app::Vault;
use coffer::app::init::{PkiPlan, init_with_pki};
use coffer::app::pki::{PkiFileError, SERVER_NEXT_PUB_FILE, pins, server_cert_path};
use coffer::crypto::kdf::KdfParams;
use coffer::store::StoreOptions;
use common::{TestDirs, empty_dirs, passphrase};

fn vault() -> (TestDirs, Vault) {
    let dirs = empty_dirs();
    init_with_pki(
        &dirs.paths,
        &passphrase(),
        KdfParams::for_tests(),
        StoreOptions::default(),
        &PkiPlan {
            sans: vec!["localhost".parse().unwrap()],
            ca_days: 30,
            server_days: 30,
        },
    )
    .unwrap();
    let (vault, _) = Vault::open(&dirs.paths, &passphrase(), StoreOptions::default()).unwrap();
    (dirs, vault)
}

#[test]
fn a_rotation_promotes_the_backup_pin_and_makes_a_new_one() {
    let (dirs, vault) = vault();
    let (current, next) = pins(&dirs.paths).unwrap();
    let r = vault.rotate_server_key(30, Some(&next)).unwrap();
    assert_eq!(
        (r.retired_pin.as_str(), r.current_pin.as_str()),
        (current.as_str(), next.as_str())
    );
    assert_eq!(pins(&dirs.paths).unwrap(), (next.clone(), r.next_pin.clone()));
    assert_ne!(r.next_pin, current);
    // The server loads the new certificate with the promoted key.
    vault.server_identity().unwrap();
}

#[test]
fn expect_next_refuses_a_key_the_apps_do_not_carry_and_changes_nothing() {
    let (dirs, vault) = vault();
    let before = pins(&dirs.paths).unwrap();
    let cert_before = std::fs::read(server_cert_path(&dirs.paths)).unwrap();
    let err = vault.rotate_server_key(30, Some(&before.0)).unwrap_err();
    assert!(err.to_string().contains("nothing was rotated"), "{err}");
    assert_eq!(pins(&dirs.paths).unwrap(), before);
    assert_eq!(std::fs::read(server_cert_path(&dirs.paths)).unwrap(), cert_before);
}

#[test]
fn an_interrupted_rotation_is_finished_by_renew_server_not_repeated() {
    let (dirs, vault) = vault();
    let (current, next) = pins(&dirs.paths).unwrap();
    let keys = &dirs.paths.keys_dir;
    let old_cert = std::fs::read(server_cert_path(&dirs.paths)).unwrap();
    let old_next = std::fs::read(keys.join(SERVER_NEXT_PUB_FILE)).unwrap();
    // A rotation whose database commit happened but whose files were never written.
    let committed = vault.rotate_server_key(30, None).unwrap();
    std::fs::write(server_cert_path(&dirs.paths), &old_cert).unwrap();
    std::fs::write(keys.join(SERVER_NEXT_PUB_FILE), &old_next).unwrap();
    assert_eq!(pins(&dirs.paths).unwrap(), (current.clone(), next.clone()));

    // Rotating again would promote a key no app knows: refused, and nothing changes.
    let err = vault.rotate_server_key(30, None).unwrap_err();
    assert!(matches!(err, PkiFileError::Interrupted(_)), "{err:?}");
    assert!(err.to_string().contains("renew-server"), "{err}");
    assert_eq!(pins(&dirs.paths).unwrap(), (current, next.clone()));
    // The server refuses the mismatched files with the same advice.
    let err = vault.server_identity().unwrap_err();
    assert!(err.to_string().contains("renew-server"), "{err}");

    // renew-server finishes the rotation from the database and says so.
    let renewal = vault.renew_server_cert(&[], 30).unwrap();
    let (now_current, now_next) = renewal.finished_rotation.expect("it reports the finished rotation");
    assert_eq!(now_current, next, "the apps' backup pin is now current");
    assert_eq!(now_next, committed.next_pin);
    assert_eq!(pins(&dirs.paths).unwrap(), (next, committed.next_pin));
    vault.server_identity().unwrap();
    // A plain renewal afterwards reports nothing of the kind.
    assert!(vault.renew_server_cert(&[], 30).unwrap().finished_rotation.is_none());
}
