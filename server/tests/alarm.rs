//! The NOSPACE alarm: over its quota the store refuses what adds data with etcd's error, keeps
//! serving reads and deletes, lists the alarm like etcd, and an operator can disarm it.

mod support;

use etcd_client::{AlarmAction, AlarmType, Client, Compare, CompareOp, Txn, TxnOp};
use std::time::Duration;
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

async fn wait_for_alarm(client: &mut Client) -> Vec<(u64, AlarmType)> {
    for _ in 0..100 {
        let list = alarms(client).await;
        if !list.is_empty() {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the NOSPACE alarm was never raised");
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
    let list = wait_for_alarm(&mut client).await;
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

    // Disarming clears it; still over quota, it is raised again at the next check.
    let disarmed = client
        .alarm(AlarmAction::Deactivate, AlarmType::Nospace, None)
        .await
        .unwrap();
    assert_eq!(disarmed.alarms().len(), 1);
    wait_for_alarm(&mut client).await;
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
