//! Two replicas' electors sharing one Lease on the fake API server.

use super::*;
use crate::testing::fake_api::FakeApi;

fn config(identity: &str, duration: Duration) -> LeaseConfig {
    LeaseConfig {
        duration,
        renew_deadline: duration * 3 / 5,
        retry: Duration::from_millis(100),
        ..LeaseConfig::new("maille-controller", "maille", identity)
    }
}

struct Replica {
    leading: watch::Receiver<bool>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn replica(api: &FakeApi, identity: &str, duration: Duration) -> Replica {
    let shutdown = CancellationToken::new();
    let (leading, task) = spawn(api.client(), config(identity, duration), shutdown.clone());
    Replica {
        leading,
        shutdown,
        task,
    }
}

async fn leads(r: &mut Replica, within: Duration) -> bool {
    tokio::time::timeout(within, r.leading.wait_for(|l| *l))
        .await
        .is_ok_and(|r| r.is_ok())
}

fn holder_of(api: &FakeApi) -> Option<String> {
    api.get::<Lease>("maille", "maille-controller")
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

#[test]
fn defaults_hand_over_within_15_seconds() {
    let c = LeaseConfig::new("l", "maille", "a");
    assert!(c.duration + 2 * c.retry <= Duration::from_secs(15));
    assert!(c.renew_deadline < c.duration);
}

#[tokio::test]
async fn a_follower_takes_over_when_the_leader_dies_and_not_before() {
    let api = FakeApi::new();
    let mut a = replica(&api, "controller-a", Duration::from_secs(1));
    assert!(leads(&mut a, Duration::from_secs(5)).await, "a never led");
    assert_eq!(holder_of(&api).as_deref(), Some("controller-a"));

    let mut b = replica(&api, "controller-b", Duration::from_secs(1));
    // While a renews, b never leads, however long it tries.
    assert!(
        !leads(&mut b, Duration::from_millis(2500)).await,
        "two leaders"
    );
    assert_eq!(holder_of(&api).as_deref(), Some("controller-a"));

    // a dies without giving the Lease up (a crash, a lost node).
    a.task.abort();
    let died = Instant::now();
    assert!(
        leads(&mut b, Duration::from_secs(10)).await,
        "b never took over"
    );
    // Not before a's Lease ran out: the last renewal was at most one retry before the crash.
    assert!(
        died.elapsed() >= Duration::from_millis(800),
        "{:?}",
        died.elapsed()
    );
    assert_eq!(holder_of(&api).as_deref(), Some("controller-b"));
    let lease: Lease = api.get("maille", "maille-controller").unwrap();
    assert_eq!(lease.spec.unwrap().lease_transitions, Some(1));
    b.shutdown.cancel();
}

#[tokio::test]
async fn a_leader_that_stops_gives_the_lease_up_at_once() {
    let api = FakeApi::new();
    // A long lease: only the release lets b take over quickly.
    let mut a = replica(&api, "controller-a", Duration::from_secs(30));
    assert!(leads(&mut a, Duration::from_secs(5)).await);
    let mut b = replica(&api, "controller-b", Duration::from_secs(30));
    assert!(!leads(&mut b, Duration::from_millis(500)).await);
    a.shutdown.cancel();
    a.task.await.unwrap();
    assert!(!*a.leading.borrow());
    assert!(
        leads(&mut b, Duration::from_secs(5)).await,
        "no hand-over on release"
    );
    assert_eq!(holder_of(&api).as_deref(), Some("controller-b"));
    b.shutdown.cancel();
}

#[tokio::test]
async fn a_leader_that_cannot_renew_stops_leading_before_the_lease_runs_out() {
    let api = FakeApi::new();
    let mut a = replica(&api, "controller-a", Duration::from_secs(3));
    assert!(leads(&mut a, Duration::from_secs(5)).await);
    api.set_forbidden("leases", true);
    let lost = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), a.leading.wait_for(|l| !*l))
        .await
        .expect("still leading without renewals")
        .unwrap();
    // The renew deadline (1.8 s) is below the lease (3 s): no overlap with a new leader.
    assert!(
        lost.elapsed() < Duration::from_secs(3),
        "{:?}",
        lost.elapsed()
    );
    a.shutdown.cancel();
}

#[tokio::test]
async fn replicas_starting_together_elect_exactly_one() {
    let api = FakeApi::new();
    let mut replicas: Vec<Replica> = ["a", "b", "c"]
        .iter()
        .map(|id| replica(&api, id, Duration::from_secs(2)))
        .collect();
    assert!(
        leads(&mut replicas[0], Duration::from_millis(300)).await
            || leads(&mut replicas[1], Duration::from_secs(3)).await
            || leads(&mut replicas[2], Duration::from_secs(3)).await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leaders: Vec<usize> = (0..3).filter(|i| *replicas[*i].leading.borrow()).collect();
    assert_eq!(leaders.len(), 1, "{leaders:?}");
    for r in &replicas {
        r.shutdown.cancel();
    }
}
