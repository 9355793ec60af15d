//! Users and devices: updates are atomic read-modify-writes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

#[test]
fn concurrent_user_updates_do_not_overwrite_each_other() {
    let (_dirs, vault) = temp_vault();
    let user = add_user(&vault, "anna");
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..40 {
                vault
                    .update_user(user.id, |b| b.password_hash = format!("hash-{i}"))
                    .unwrap();
            }
        });
        s.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            vault.update_user(user.id, |b| b.disabled = true).unwrap();
        });
    });
    let after = vault.user(user.id).unwrap();
    assert!(
        after.body.disabled,
        "the disable was lost to a concurrent password change"
    );
    assert_eq!(after.body.password_hash, "hash-39");
}

#[test]
fn revocation_is_kept_when_racing_other_updates() {
    let (_dirs, vault) = temp_vault();
    let user = add_user(&vault, "ben");
    let device = add_device(&vault, user.id, "phone", thumbprint(1));
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..20 {
                vault.revoke_device(device.id).unwrap();
            }
        });
        s.spawn(|| {
            for i in 0..20 {
                vault
                    .update_user(user.id, |b| b.password_hash = format!("h{i}"))
                    .unwrap();
            }
        });
    });
    assert!(
        vault
            .device_by_thumbprint(&thumbprint(1))
            .unwrap()
            .unwrap()
            .body
            .revoked
    );
}

#[test]
fn a_user_name_cannot_be_changed_through_update() {
    let (_dirs, vault) = temp_vault();
    let user = add_user(&vault, "carla");
    vault.update_user(user.id, |b| b.name = "mallory".into()).unwrap();
    assert!(vault.user_by_name("mallory").unwrap().is_none());
    assert_eq!(vault.user_by_name("carla").unwrap().unwrap().id, user.id);
}
