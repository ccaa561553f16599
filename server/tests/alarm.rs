//! The NOSPACE alarm: over its quota the store refuses what adds data with etcd's error, keeps
//! serving reads and deletes, lists the alarm like etcd, and an operator can disarm it.

mod support;

use etcd_client::{AlarmAction, AlarmType, Client, Compare, CompareOp, Txn, TxnOp};
use support::Engram;

async fn alarms(client: &mut Client) -> Vec<(u64, AlarmType)> {
    let resp = client
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap();
    resp.alarms()
        .iter()
        .map(|a| (a.member_id(), a.alarm()))
        .collect()
}

fn assert_no_space(err: etcd_client::Error) {
    match err {
        etcd_client::Error::GRpcStatus(status) => {
            assert_eq!(status.code(), tonic::Code::ResourceExhausted);
            assert_eq!(
                status.message(),
                "etcdserver: mvcc: database space exceeded"
            );
        }
        other => panic!("unexpected error {other:?}"),
    }
}

#[tokio::test]
async fn over_quota_refuses_writes_until_disarmed() {
    let engram = Engram::start_with_args(&["--quota-backend-bytes".into(), "1".into()]).await;
    let mut client = engram.client().await;
    // As in etcd, the quota is checked by each write: the first one raises the alarm.
    assert!(alarms(&mut client).await.is_empty());
    assert_no_space(client.put("k", "v", None).await.unwrap_err());
    let list = alarms(&mut client).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].1, AlarmType::Nospace);
    let member = client.member_list().await.unwrap().members()[0].id();
    assert_eq!(list[0].0, member);

    // What adds data is refused...
    assert_no_space(client.put("k", "v", None).await.unwrap_err());
    assert_no_space(client.lease_grant(60, None).await.unwrap_err());
    let txn = Txn::new()
        .when(vec![Compare::version("k", CompareOp::Equal, 0)])
        .or_else(vec![TxnOp::put("k", "v", None)]);
    assert_no_space(client.txn(txn).await.unwrap_err());
    // ...what reads or removes is not.
    client.get("k", None).await.unwrap();
    client.delete("k", None).await.unwrap();
    let read_only = Txn::new().and_then(vec![TxnOp::get("k", None)]);
    client.txn(read_only).await.unwrap();

    // Disarming the member's alarm (as `etcdctl alarm disarm` does) clears it; still over
    // quota, the next write raises it again.
    let mut on_member = etcd_client::AlarmOptions::new();
    on_member.with_member(member);
    let disarmed = client
        .alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(on_member))
        .await
        .unwrap();
    assert_eq!(disarmed.alarms().len(), 1);
    assert!(alarms(&mut client).await.is_empty());
    assert_no_space(client.put("k", "v", None).await.unwrap_err());
    assert_eq!(alarms(&mut client).await.len(), 1);
}

/// The quota counts the store's data, not the journal space the engine allocates ahead (64
/// MiB for an empty store), and each write is checked: no more is acknowledged than fits.
#[tokio::test]
async fn the_quota_is_the_stores_logical_size_checked_by_every_write() {
    const QUOTA: usize = 4 << 20;
    let engram =
        Engram::start_with_args(&["--quota-backend-bytes".into(), QUOTA.to_string()]).await;
    let mut client = engram.client().await;
    let status = client.status().await.unwrap();
    assert!(
        status.raft_used_db_size() < (QUOTA as i64) / 4,
        "an empty store uses {} bytes",
        status.raft_used_db_size()
    );
    let value = vec![7u8; 100 << 10];
    let mut acknowledged = 0;
    let refused = loop {
        match client
            .put(format!("k{acknowledged}"), value.clone(), None)
            .await
        {
            Ok(_) => acknowledged += 1,
            Err(err) => break err,
        }
        assert!(acknowledged < 1000, "the quota never stopped the writes");
    };
    assert_no_space(refused);
    let written = acknowledged * value.len();
    assert!(
        (QUOTA / 2..=QUOTA).contains(&written),
        "{written} bytes acknowledged under a quota of {QUOTA}"
    );
    assert_eq!(alarms(&mut client).await.len(), 1);
    let count = client
        .get(
            "k",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await
        .unwrap()
        .count();
    assert_eq!(count, acknowledged as i64);
}

#[tokio::test]
async fn an_operator_can_raise_and_clear_the_alarm() {
    let engram = Engram::start().await;
    let mut client = engram.client().await;
    assert!(alarms(&mut client).await.is_empty());
    client.put("k", "v", None).await.unwrap();
    client
        .alarm(AlarmAction::Activate, AlarmType::Nospace, None)
        .await
        .unwrap();
    assert_eq!(alarms(&mut client).await.len(), 1);
    assert_no_space(client.put("k", "w", None).await.unwrap_err());
    client
        .alarm(AlarmAction::Deactivate, AlarmType::Nospace, None)
        .await
        .unwrap();
    assert!(alarms(&mut client).await.is_empty());
    client.put("k", "w", None).await.unwrap();
}
