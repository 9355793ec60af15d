//! Input the API will pass through: control characters are refused before anything is
//! stored, and one huge write is handled a chunk at a time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use coffer::app::VaultError;
use coffer::app::documents::ListFilter;
use coffer::app::principals::UserBody;
use coffer::model::Role;
use common::*;

#[test]
fn control_characters_in_metadata_are_refused_and_nothing_is_staged() {
    let (_dirs, vault) = temp_vault();
    let cases: [fn(&mut coffer::app::documents::NewDocument); 4] = [
        |d| d.name = "contract.pdf\r\nX-Injected: 1".into(),
        |d| d.content_type = "application/pdf\0".into(),
        |d| d.title = "title\u{1b}[2J".into(),
        |d| d.tags = vec!["ok".into(), "bad\ntag".into()],
    ];
    for change in cases {
        let mut new = new_document(some_owner(), "contract.pdf");
        change(&mut new);
        let err = vault.upload(new).err().expect("refused");
        assert!(
            matches!(err, VaultError::Invalid(ref m) if m.contains("control characters")),
            "{err:?}"
        );
    }
    assert_eq!(vault.store().snapshot().unwrap().staged_uploads().unwrap(), 0);
    assert!(vault.list(ListFilter::default()).unwrap().documents.is_empty());
}

#[test]
fn control_characters_in_user_names_are_refused() {
    let (_dirs, vault) = temp_vault();
    let err = vault
        .add_user(UserBody {
            name: "eve\n".into(),
            role: Role::Member,
            password_hash: "x".into(),
            disabled: false,
            totp: None,
        })
        .unwrap_err();
    assert!(matches!(err, VaultError::Invalid(_)), "{err:?}");
}

#[test]
fn one_large_write_round_trips() {
    let (_dirs, vault) = temp_vault();
    let data = pattern(77, 5 * 1024 * 1024 + 3);
    let mut writer = vault.upload(new_document(some_owner(), "big.bin")).unwrap();
    writer.write(&data).unwrap();
    let info = writer.finish().unwrap();
    assert_eq!(read_all(&vault, info.id).unwrap(), data);
}

#[test]
fn device_names_are_checked_like_user_names() {
    let (_dirs, vault) = temp_vault();
    let owner = add_user(&vault, "dana");
    for name in ["", "phone\r\nX: 1", &"x".repeat(256)] {
        let body = coffer::app::principals::DeviceBody {
            name: name.to_owned(),
            thumbprint: thumbprint(9),
            revoked: false,
            signing_secret: None,
            serial: None,
            revoked_at: None,
            retired: Vec::new(),
        };
        let err = vault
            .add_device(owner.id, body, coffer::model::Timestamp::now())
            .unwrap_err();
        assert!(matches!(err, VaultError::Invalid(_)), "{err:?}");
    }
}
