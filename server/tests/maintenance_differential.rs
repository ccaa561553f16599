//! Maintenance calls whose small details client libraries check, made with raw gRPC on a
//! real etcd 3.5 and on Engram, answers compared exactly (member ids replaced by `<member>`):
//! alarms kept per member (member 0 apart from the real one), MoveLeader to the leader
//! itself and to an unknown member, Defragment's response without a header.

mod support;

use etcdpb::etcdserverpb::{
    AlarmRequest, DefragmentRequest, MoveLeaderRequest, PutRequest, StatusRequest,
    alarm_request::AlarmAction, kv_client::KvClient, maintenance_client::MaintenanceClient,
};
use support::{Engram, Etcd, strip_headers};
use tonic::transport::Channel;

/// `result` as comparable text: headers only as present or not (cluster ids and revision
/// accounting differ), the member's id as `<member>`.
fn shown<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    member: u64,
) -> String {
    let text = match result {
        Ok(resp) => format!("{:?}", resp.into_inner()),
        Err(status) => format!("error {:?}: {}", status.code(), status.message()),
    };
    strip_headers(&text).replace(&member.to_string(), "<member>")
}

async fn answers(endpoint: String) -> Vec<String> {
    let channel = Channel::from_shared(endpoint)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut m = MaintenanceClient::new(channel.clone());
    let mut kv = KvClient::new(channel);
    let status = m.status(StatusRequest {}).await.unwrap().into_inner();
    let member = status.header.unwrap().member_id;
    let alarm = |action: AlarmAction, member_id: u64| AlarmRequest {
        action: action as i32,
        member_id,
        alarm: 1, // NOSPACE
    };
    let raise = |member_id| alarm(AlarmAction::Activate, member_id);
    let clear = |member_id| alarm(AlarmAction::Deactivate, member_id);
    let list = AlarmRequest {
        action: AlarmAction::Get as i32,
        member_id: 0,
        alarm: 0, // NONE: every alarm
    };
    let put = || PutRequest {
        key: "k".into(),
        value: "v".into(),
        ..Default::default()
    };
    let mut out = Vec::new();
    out.push(format!(
        "raise 0: {}",
        shown(m.alarm(raise(0)).await, member)
    ));
    out.push(format!(
        "raise 0 again: {}",
        shown(m.alarm(raise(0)).await, member)
    ));
    out.push(format!(
        "raise member: {}",
        shown(m.alarm(raise(member)).await, member)
    ));
    // etcd lists alarms in a Go map's order: sorted here.
    let mut listed = m.alarm(list).await.unwrap().into_inner().alarms;
    listed.sort_by_key(|a| a.member_id != 0);
    let listed = format!("{listed:?}").replace(&member.to_string(), "<member>");
    out.push(format!("list: {listed}"));
    let mut errors = m
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .errors;
    errors.sort();
    let errors = format!("{errors:?}").replace(&member.to_string(), "<member>");
    out.push(format!("status errors: {errors}"));
    out.push(format!(
        "clear 0: {}",
        shown(m.alarm(clear(0)).await, member)
    ));
    out.push(format!(
        "clear 0 again: {}",
        shown(m.alarm(clear(0)).await, member)
    ));
    out.push(format!("list: {}", shown(m.alarm(list).await, member)));
    out.push(format!(
        "put while raised: {}",
        shown(kv.put(put()).await, member)
    ));
    out.push(format!(
        "clear member: {}",
        shown(m.alarm(clear(member)).await, member)
    ));
    out.push(format!("list: {}", shown(m.alarm(list).await, member)));
    out.push(format!("put: {}", shown(kv.put(put()).await, member)));

    let to = |target_id| MoveLeaderRequest { target_id };
    out.push(format!(
        "move to itself: {}",
        shown(m.move_leader(to(member)).await, member)
    ));
    out.push(format!(
        "move to a stranger: {}",
        shown(m.move_leader(to(12345)).await, member)
    ));
    let defragmented = m.defragment(DefragmentRequest {}).await;
    out.push(format!("defragment: {}", shown(defragmented, member)));
    out
}

#[tokio::test]
async fn alarms_move_leader_and_defragment_answer_as_etcd() {
    let (etcd, engram) = tokio::join!(Etcd::start(), Engram::start());
    let expected = answers(etcd.endpoint()).await;
    let got = answers(engram.endpoint()).await;
    for (etcd, engram) in expected.iter().zip(&got) {
        assert_eq!(engram, etcd);
    }
    assert_eq!(got.len(), expected.len());
}
