//! Endpoint secrets at rest (DESIGN 10, `ACCOMMADOR_SECRET_KEY`): what the database holds is
//! sealed, what the API shows and what deliveries are signed with is the secret, and a key
//! rotation (new key first in the list, `secrets reencrypt`, old key dropped) keeps every
//! endpoint signing. Runs on SQLite and, with `ACCOMMADOR_TEST_POSTGRES_URL`, on PostgreSQL.

use accommador::config::Secret as SettingSecret;
use accommador::domain::endpoint::NewEndpoint;
use accommador::domain::secret_box::SecretKeys;
use accommador::store::{DatabaseUrl, Ownership, SecretsAtRest, Store};
use base64::Engine;
use clap::Parser;
use serde_json::json;

use super::helpers::{Tenant, TestApp, spawn_app_with};
use super::receiver::Receiver;
use super::{WAIT, endpoint, ms, verify};

/// A key of the setting: base64 of 32 bytes.
fn key(byte: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

fn key_id(list: &str) -> String {
    SecretKeys::parse(list)
        .unwrap()
        .newest_id()
        .unwrap()
        .to_owned()
}

async fn app_with_keys(list: &str) -> TestApp {
    let list = list.to_owned();
    spawn_app_with(move |s| {
        s.retry_schedule = vec![ms(50), ms(50), ms(50)];
        s.secret_key = Some(SettingSecret::new(list));
    })
    .await
}

/// (secret, key_id) of every stored secret of `endpoint_id`, read straight from the table.
async fn stored(app: &TestApp, endpoint_id: &str) -> Vec<(String, Option<String>)> {
    let sql =
        format!("SELECT secret, key_id FROM endpoint_secrets WHERE endpoint_id = '{endpoint_id}'");
    app.db
        .rows(&sql, &sql)
        .await
        .into_iter()
        .map(|r| (r[0].clone().unwrap(), r[1].clone()))
        .collect()
}

/// A store of our own on the test's database (as a CLI tool opens it), with `keys`.
async fn tool_store(app: &TestApp, keys: &str) -> Store {
    let keys = if keys.is_empty() {
        SecretKeys::none()
    } else {
        SecretKeys::parse(keys).unwrap()
    };
    Store::open(
        &DatabaseUrl::parse(&app.db.url).unwrap(),
        Ownership::Tool,
        2,
    )
    .await
    .unwrap()
    .with_secret_keys(keys)
}

/// An endpoint written by `store` (sealed with its keys, or plain without), as an older
/// server would have written it; returns (id, secret).
async fn endpoint_by(store: &Store, t: &Tenant, url: &str) -> (String, String) {
    let body = json!({ "url": url });
    let new = NewEndpoint::from_json(body.as_object().unwrap()).unwrap();
    let secret = accommador_webhooks::Secret::generate().expose();
    let e = store
        .create_endpoint(t.id.clone(), new, secret.clone())
        .await
        .unwrap();
    (e.id, secret)
}

#[tokio::test]
async fn secrets_are_sealed_at_rest_and_every_request_verifies_with_the_secret_the_api_shows() {
    let k1 = key(1);
    let app = app_with_keys(&k1).await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    let ep = endpoint(&app, &t, &rx.url("/hooks"), None).await;

    let shown = app
        .get(&t, &format!("/v1/endpoints/{}/secret", ep.id))
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(shown["secret"], ep.secret.as_str());
    let bare = ep.secret.trim_start_matches("whsec_");
    let rows = stored(&app, &ep.id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    for (secret, kid) in &rows {
        assert!(
            !secret.contains(bare),
            "the secret is in the table in clear"
        );
        assert!(secret.starts_with("sealed:v1:"), "{secret}");
        assert_eq!(kid.as_deref(), Some(key_id(&k1).as_str()));
    }

    app.create_user(&t, json!({"email": "ada@example.com"}))
        .await;
    let got = rx.wait_for("/hooks", 1, WAIT).await;
    verify(&ep.secret, &got[0]);

    // A rotation: the new secret and the rotated-out one (still signing) are both sealed.
    let rotated = app
        .post(
            &t,
            &format!("/v1/endpoints/{}/secret/rotate", ep.id),
            &json!({}),
        )
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let rows = stored(&app, &ep.id).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (secret, kid) in &rows {
        assert!(!secret.contains(bare) && !secret.contains(rotated.trim_start_matches("whsec_")));
        assert!(kid.is_some(), "{secret}");
    }
    app.create_user(&t, json!({"email": "grace@example.com"}))
        .await;
    let got = rx.wait_for("/hooks", 2, WAIT).await;
    verify(&rotated, &got[1]);
    verify(&ep.secret, &got[1]);
}

#[tokio::test]
async fn an_old_key_second_in_the_list_still_opens_and_reencrypt_moves_everything_to_the_new_one() {
    let (k1, k2) = (key(1), key(2));
    let both = format!("{k2},{k1}");
    let app = app_with_keys(&both).await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    // Secrets from before: one sealed with the old key alone, one from before the setting.
    let (old_id, old_secret) = endpoint_by(&tool_store(&app, &k1).await, &t, &rx.url("/old")).await;
    let (plain_id, plain_secret) =
        endpoint_by(&tool_store(&app, "").await, &t, &rx.url("/plain")).await;
    assert_eq!(stored(&app, &plain_id).await[0].0, plain_secret);
    assert_eq!(stored(&app, &old_id).await[0].1, Some(key_id(&k1)));

    let shown = app
        .get(&t, &format!("/v1/endpoints/{old_id}/secret"))
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(
        shown["secret"],
        old_secret.as_str(),
        "the old key still opens"
    );
    app.create_user(&t, json!({"email": "ada@example.com"}))
        .await;
    verify(&old_secret, &rx.wait_for("/old", 1, WAIT).await[0]);
    verify(&plain_secret, &rx.wait_for("/plain", 1, WAIT).await[0]);

    // `accommador secrets reencrypt`, beside the running server, with the same list.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("accommador.toml");
    std::fs::write(&config, format!("secret_key = \"{both}\"\n")).unwrap();
    let cli = accommador::cli::Cli::parse_from([
        "accommador",
        "--config",
        config.to_str().unwrap(),
        "secrets",
        "reencrypt",
        "--database",
        &app.db.url,
    ]);
    accommador::commands::run(cli).await.unwrap();
    for id in [&old_id, &plain_id] {
        for (secret, kid) in stored(&app, id).await {
            assert_eq!(kid, Some(key_id(&k2)), "{id}");
            assert!(!secret.contains(plain_secret.trim_start_matches("whsec_")));
        }
    }

    // The old key can go: the new one alone opens everything, start-up's check included.
    let new_only = tool_store(&app, &k2).await;
    assert_eq!(
        new_only.check_secret_keys().await.unwrap(),
        SecretsAtRest::Sealed { plain_left: false }
    );
    assert_eq!(
        new_only
            .signing_secrets(t.id.clone(), old_id.clone())
            .await
            .unwrap(),
        vec![old_secret.clone()]
    );
    let old_only = tool_store(&app, &k1).await;
    let refused = old_only.check_secret_keys().await.unwrap_err().to_string();
    assert!(refused.contains(&key_id(&k2)), "{refused}");
    assert!(
        !refused.contains(&k1) && !refused.contains(&k2),
        "{refused}"
    );

    app.create_user(&t, json!({"email": "grace@example.com"}))
        .await;
    verify(&old_secret, &rx.wait_for("/old", 2, WAIT).await[1]);
    verify(&plain_secret, &rx.wait_for("/plain", 2, WAIT).await[1]);
}

#[tokio::test]
async fn a_secret_the_server_cannot_open_is_never_sent_unsigned_nor_shown() {
    let (k1, k2) = (key(1), key(2));
    let app = app_with_keys(&k1).await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    let readable = endpoint(&app, &t, &rx.url("/readable"), None).await;
    // Sealed, while the server runs, with a key this server does not have.
    let (foreign, _) = endpoint_by(&tool_store(&app, &k2).await, &t, &rx.url("/foreign")).await;

    let r = app
        .get(&t, &format!("/v1/endpoints/{foreign}/secret"))
        .await;
    assert_eq!(r.status(), reqwest::StatusCode::INTERNAL_SERVER_ERROR);
    let body = r.text().await.unwrap();
    assert!(!body.contains(&k1) && !body.contains(&k2), "{body}");

    app.create_user(&t, json!({"email": "ada@example.com"}))
        .await;
    verify(
        &readable.secret,
        &rx.wait_for("/readable", 1, WAIT).await[0],
    );
    // The other endpoint's delivery stays pending, with no attempt, and nothing reached it.
    let deliveries = app
        .get(&t, &format!("/v1/deliveries?endpoint_id={foreign}"))
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let delivery = &deliveries["data"][0];
    assert_eq!(delivery["status"], "pending", "{deliveries}");
    let attempts = super::attempts(&app, &t, delivery["id"].as_str().unwrap()).await;
    assert!(attempts.is_empty(), "{attempts:?}");
    assert!(rx.received("/foreign").is_empty());
}
