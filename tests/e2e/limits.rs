//! The intake's limits, shared by every replica through NATS: `Idempotency-Key` replays, the
//! per-tenant cap on active jobs and its healing after an intake dies mid-request, backpressure
//! from the job queue (the soft backlog and the stream's hard limit), and the shared rate limit.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use common::{JobId, names};
use futures::stream::FuturesUnordered;
use futures::{StreamExt, TryStreamExt};
use reqwest::header::HeaderValue;
use serde_json::{Value, json};
use system_tests::processes::{Kind, ServiceFleet};
use system_tests::servers::NatsUser;
use system_tests::stack::Stack;
use system_tests::wait::{wait_for, wait_until};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::init_logs;

/// The intakes' bucket of active-job slots: `active.<hex tenant>`.
const LIMITS_BUCKET: &str = "download-limits";
/// The request header carrying an idempotency key.
const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// The response header marking a remembered answer.
const REPLAYED: &str = "idempotent-replayed";
/// The intake's path starting a job.
const INITIATE: &str = "/v1/download/initiate";
/// How long a released slot may take to leave the bucket: far below every lease used here, so
/// a release within it is a release by the job's end, not by the lease.
const RELEASE_PATIENCE: Duration = Duration::from_secs(3);
/// How long draining a queue that a processor just started on may take.
const DRAIN_PATIENCE: Duration = Duration::from_secs(30);

/// An initiate repeated with its `Idempotency-Key` and the same body gets the first answer again
/// (202, the same `jobId`, `Idempotent-Replayed: true`, where the first answer had no such
/// header) and no second job; the same key with another body is refused with 422
/// `IDEMPOTENCY_KEY_REUSED`; another tenant's use of the same key is its own; a request refused
/// for its body (400, before any claim) leaves its key unused; a malformed key (empty, 256 characters, a control or non-ASCII
/// character) is refused with 400 naming the header, and creates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initiate_repeated_with_its_idempotency_key_replays_the_first_answer_without_a_second_job() {
    init_logs();
    let stack = queue_only_stack(&[]).await;
    let (alice, bob) = (stack.bearer("alice").await.unwrap(), stack.bearer("bob").await.unwrap());
    let url = stack.url(INITIATE);
    let body = json!({ "file_ids": [70_000] });
    let key = HeaderValue::from_static("order-4711");

    let first = post(&stack.http, &url, &alice, Some(&key), &body).await;
    assert_eq!(first.status, 202, "{first:?}");
    assert_eq!(first.header(REPLAYED), None, "a first answer is no replay: {first:?}");
    let job_id = first.job_id().to_string();

    let replay = post(&stack.http, &url, &alice, Some(&key), &body).await;
    assert_eq!(
        (replay.status, replay.job_id(), replay.header(REPLAYED)),
        (202, job_id.as_str(), Some("true")),
        "{replay:?}"
    );
    assert_eq!(job_count(&stack).await, 1, "the replay created no second job");
    assert_eq!(stack.status("alice", &job_id).await.unwrap()["status"], "queued");

    let other_body = json!({ "file_ids": [70_000, 70_001] });
    post(&stack.http, &url, &alice, Some(&key), &other_body)
        .await
        .assert_problem(422, "IDEMPOTENCY_KEY_REUSED");

    // Keys are scoped per tenant: bob's use of the same key is a job of his own.
    let bobs = post(&stack.http, &url, &bob, Some(&key), &body).await;
    assert_eq!((bobs.status, bobs.header(REPLAYED)), (202, None), "{bobs:?}");
    assert_ne!(bobs.job_id(), job_id, "another tenant's key is its own");
    let bobs_replay = post(&stack.http, &url, &bob, Some(&key), &body).await;
    assert_eq!(
        (bobs_replay.status, bobs_replay.job_id(), bobs_replay.header(REPLAYED)),
        (202, bobs.job_id(), Some("true")),
        "{bobs_replay:?}"
    );
    assert_eq!(job_count(&stack).await, 2);

    // Only accepted answers are remembered: the key of a refused request is free for the
    // corrected one, even with another body.
    let retried_key = HeaderValue::from_static("order-4712");
    let invalid = post(
        &stack.http,
        &url,
        &alice,
        Some(&retried_key),
        &json!({ "file_ids": [] }),
    )
    .await;
    assert_eq!(invalid.assert_problem(400, "VALIDATION_FAILED")["field"], "file_ids");
    let corrected = post(&stack.http, &url, &alice, Some(&retried_key), &body).await;
    assert_eq!(
        (corrected.status, corrected.header(REPLAYED)),
        (202, None),
        "{corrected:?}"
    );
    assert_ne!(corrected.job_id(), job_id);
    assert_eq!(job_count(&stack).await, 3);

    // A key is 1 to 255 printable ASCII characters.
    let malformed = [
        ("no character", HeaderValue::from_static("")),
        ("256 characters", HeaderValue::from_str(&"k".repeat(256)).unwrap()),
        ("a control character", HeaderValue::from_static("tab\there")),
        (
            "a non-ASCII character",
            HeaderValue::from_bytes("café".as_bytes()).unwrap(),
        ),
    ];
    for (what, malformed_key) in &malformed {
        let refused = post(&stack.http, &url, &alice, Some(malformed_key), &body).await;
        let problem = refused.assert_problem(400, "VALIDATION_FAILED");
        assert_eq!(problem["field"], IDEMPOTENCY_KEY, "a key of {what}: {problem}");
    }
    assert_eq!(job_count(&stack).await, 3, "malformed keys created nothing");
    let longest = HeaderValue::from_str(&"k".repeat(255)).unwrap();
    let accepted = post(&stack.http, &url, &alice, Some(&longest), &body).await;
    assert_eq!(
        (accepted.status, accepted.header(REPLAYED)),
        (202, None),
        "a key of 255 characters is valid: {accepted:?}"
    );
}

/// A claim on a key whose request is still being handled answers 409
/// `IDEMPOTENCY_KEY_IN_FLIGHT` with `Retry-After`; a claim whose request died before answering
/// (an intake killed between the claim and the answer; forged here as an old unanswered claim) is
/// taken over: if its job was accepted the answer is rebuilt from the job (202, the same
/// `jobId`, replayed, no second job), and if not the job is created now under a new id (the old
/// id's message may have been dropped already, so reusing it could leave a record without one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_request_died_is_taken_over_and_one_still_handled_answers_409() {
    init_logs();
    let stack = queue_only_stack(&[]).await;
    let tenant = "carol";
    let bearer = stack.bearer(tenant).await.unwrap();
    let url = stack.url(INITIATE);
    let file_ids = vec![70_001_i64];
    let body = json!({ "file_ids": file_ids });
    let fingerprint = intake::idempotency::fingerprint(&(&file_ids, &None::<String>));
    let keys = jetstream::new(stack.nats_client().await.unwrap())
        .get_key_value(names::IDEMPOTENCY_BUCKET)
        .await
        .unwrap();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let forge = |key: &str, job_id: JobId, claimed_at: i64| {
        let keys = keys.clone();
        let bucket_key = intake::idempotency::bucket_key(&intake::idempotency::tenant_scope(tenant), "initiate", key);
        let claim = intake::idempotency::Claim {
            fingerprint: fingerprint.clone(),
            job_id,
            claimed_at,
            expires_at: now_ms + 3_600_000,
            answer: None,
            holder: "a request of another intake".into(),
        };
        async move {
            keys.create(bucket_key, serde_json::to_vec(&claim).unwrap().into())
                .await
                .unwrap();
        }
    };

    // Still being handled (claimed a moment ago): 409, retryable.
    forge("in-flight", JobId::new(), now_ms).await;
    let in_flight = post(
        &stack.http,
        &url,
        &bearer,
        Some(&HeaderValue::from_static("in-flight")),
        &body,
    )
    .await;
    in_flight.assert_problem(409, "IDEMPOTENCY_KEY_IN_FLIGHT");
    assert!(in_flight.retry_after() >= 1, "{in_flight:?}");
    assert_eq!(job_count(&stack).await, 0);

    // Died before accepting (claimed a minute ago, no job): the job is created, under a new id.
    let lost = JobId::new();
    forge("died-before", lost, now_ms - 60_000).await;
    let died_before = HeaderValue::from_static("died-before");
    let taken_over = post(&stack.http, &url, &bearer, Some(&died_before), &body).await;
    assert_eq!(
        (taken_over.status, taken_over.header(REPLAYED)),
        (202, None),
        "{taken_over:?}"
    );
    assert_ne!(
        taken_over.job_id(),
        lost.to_string(),
        "the dead request's id is not reused"
    );
    assert_eq!(job_count(&stack).await, 1);
    let replay = post(&stack.http, &url, &bearer, Some(&died_before), &body).await;
    assert_eq!(
        (replay.status, replay.job_id(), replay.header(REPLAYED)),
        (202, taken_over.job_id(), Some("true"))
    );

    // Died after accepting (the job exists, the answer was never remembered): the answer is
    // rebuilt from the job, and no second job is made.
    let accepted = post(&stack.http, &url, &bearer, None, &body).await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let existing = JobId::parse(accepted.job_id()).unwrap();
    forge("died-after", existing, now_ms - 60_000).await;
    let rebuilt = post(
        &stack.http,
        &url,
        &bearer,
        Some(&HeaderValue::from_static("died-after")),
        &body,
    )
    .await;
    assert_eq!(
        (rebuilt.status, rebuilt.job_id(), rebuilt.header(REPLAYED)),
        (202, accepted.job_id(), Some("true")),
        "{rebuilt:?}"
    );
    assert_eq!(rebuilt.body["totalFileIds"], 1, "{rebuilt:?}");
    assert_eq!(job_count(&stack).await, 2);
}

/// An `Idempotency-Key` is remembered for `IDEMPOTENCY_KEY_TTL_SECONDS` from its first use: until
/// then the same request is answered by replays of the first job; after it the same request is
/// new again (another job, no replay header), and never before the TTL has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_new_again_once_its_ttl_has_passed_and_not_before() {
    init_logs();
    // The shortest TTL allowed outlives a request by 5 s: with a 1 s request timeout, 6 s.
    let ttl = Duration::from_secs(6);
    let stack = queue_only_stack(&[
        ("IDEMPOTENCY_KEY_TTL_SECONDS", "6"),
        ("REQUEST_TIMEOUT_MS", "1000"),
        ("START_WAIT_MS", "0"),
    ])
    .await;
    let bearer = stack.bearer("tess").await.unwrap();
    let url = stack.url(INITIATE);
    let body = json!({ "file_ids": [70_010] });
    let key = HeaderValue::from_static("nightly-export-2024-06-01");

    let first_sent = Instant::now();
    let first = post(&stack.http, &url, &bearer, Some(&key), &body).await;
    assert_eq!((first.status, first.header(REPLAYED)), (202, None), "{first:?}");
    let first_job = first.job_id().to_string();

    let (forgotten_after, renewed) = wait_for("the key to be forgotten", ttl + Duration::from_secs(10), || {
        answer_unless_replayed(&stack.http, &url, &bearer, &key, &body, &first_job, first_sent)
    })
    .await
    .unwrap();
    eprintln!("the key was new again {forgotten_after:?} after its first use (TTL {ttl:?})");
    assert!(
        forgotten_after >= ttl,
        "the key was forgotten {forgotten_after:?} after its first use, before its TTL of {ttl:?}"
    );
    assert_eq!(renewed.header(REPLAYED), None, "{renewed:?}");
    assert_eq!(
        job_count(&stack).await,
        2,
        "one job per life of the key, none per replay"
    );
}

/// `POST /v1/download/start` honours `Idempotency-Key` as initiate does: its 202 (a job still
/// running at the end of `START_WAIT_MS`) and its 200 (the finished download) are replayed with
/// the same status and the same `jobId` or `file_id`, with `Idempotent-Replayed: true` and no
/// second job; the same key with another body is refused with 422.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_repeated_with_its_idempotency_key_replays_its_first_answer() {
    init_logs();
    let tenant = "legacy-client";
    let file_id: u64 = 70_020;
    let mut stack = queue_only_stack(&[("START_WAIT_MS", "3000")]).await;
    stack.put_file(file_id, 256).await.unwrap();
    let bearer = stack.bearer(tenant).await.unwrap();
    let url = stack.url("/v1/download/start");
    let body = json!({ "file_id": file_id });

    // No processor: the job outlasts the wait, and the answer is the job to poll.
    let key = HeaderValue::from_static("legacy-1");
    let first = post(&stack.http, &url, &bearer, Some(&key), &body).await;
    assert_eq!((first.status, first.header(REPLAYED)), (202, None), "{first:?}");
    assert_eq!(first.body["file_id"], file_id);
    let job_id = first.job_id().to_string();
    let replay = post(&stack.http, &url, &bearer, Some(&key), &body).await;
    assert_eq!(
        (replay.status, replay.job_id(), replay.header(REPLAYED)),
        (202, job_id.as_str(), Some("true")),
        "{replay:?}"
    );
    assert_eq!(replay.body["file_id"], file_id);
    post(
        &stack.http,
        &url,
        &bearer,
        Some(&key),
        &json!({ "file_id": file_id + 1 }),
    )
    .await
    .assert_problem(422, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(job_count(&stack).await, 1, "the replay created no second job");

    // With a processor the job ends within the wait: the old service's 200, replayed as such.
    stack.start_processor(&[]).await.unwrap();
    assert_eq!(
        stack.wait_for_terminal(tenant, &job_id).await.unwrap()["status"],
        "completed"
    );
    let finished_key = HeaderValue::from_static("legacy-2");
    let finished = post(&stack.http, &url, &bearer, Some(&finished_key), &body).await;
    assert_eq!(
        (finished.status, finished.header(REPLAYED)),
        (200, None),
        "{finished:?}"
    );
    assert_eq!(finished.body["status"], "completed", "{finished:?}");
    let finished_replay = post(&stack.http, &url, &bearer, Some(&finished_key), &body).await;
    assert_eq!(
        (finished_replay.status, finished_replay.header(REPLAYED)),
        (200, Some("true")),
        "{finished_replay:?}"
    );
    assert_eq!(finished_replay.body["file_id"], file_id);
    assert_eq!(finished_replay.body["status"], "completed");
    assert_eq!(
        job_count(&stack).await,
        2,
        "the replay of a finished start created no job"
    );
}

/// Ten concurrent initiates with one `Idempotency-Key`, split over two intakes, make one job:
/// one answer is the original 202, every other is its replay (202, same `jobId`,
/// `Idempotent-Replayed: true`) or a 409 `IDEMPOTENCY_KEY_IN_FLIGHT` with `Retry-After`; a 409
/// retried afterwards is a replay of the same job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_sent_to_two_intakes_at_once_makes_exactly_one_job() {
    init_logs();
    let stack = queue_only_stack(&[]).await;
    let second = OtherIntake::start(&stack).await;
    let bearer = stack.bearer("twins").await.unwrap();
    let urls = [stack.url(INITIATE), second.url(INITIATE)];
    let body = json!({ "file_ids": [70_030] });
    let key = HeaderValue::from_static("checkout-8c1e");

    let answers =
        futures::future::join_all((0..10).map(|index| post(&stack.http, &urls[index % 2], &bearer, Some(&key), &body)))
            .await;
    let originals: Vec<&Answer> = answers
        .iter()
        .filter(|answer| answer.status == 202 && answer.header(REPLAYED).is_none())
        .collect();
    assert_eq!(originals.len(), 1, "one original answer: {answers:#?}");
    let job_id = originals[0].job_id().to_string();
    let mut in_flight = Vec::new();
    for (index, answer) in answers.iter().enumerate() {
        match answer.status {
            202 => {
                assert_eq!(answer.job_id(), job_id, "{answers:#?}");
                assert!(
                    answer.header(REPLAYED).is_none() || answer.header(REPLAYED) == Some("true"),
                    "{answer:?}"
                );
            }
            409 => {
                answer.assert_problem(409, "IDEMPOTENCY_KEY_IN_FLIGHT");
                assert!(answer.retry_after() >= 1, "{answer:?}");
                in_flight.push(index);
            }
            _ => panic!("neither the job nor a request in flight: {answer:?}"),
        }
    }
    eprintln!(
        "10 concurrent uses of one key over two intakes: 1 original, {} replays, {} in flight",
        answers.len() - 1 - in_flight.len(),
        in_flight.len()
    );
    for index in in_flight {
        let retried = post(&stack.http, &urls[index % 2], &bearer, Some(&key), &body).await;
        assert_eq!(
            (retried.status, retried.job_id(), retried.header(REPLAYED)),
            (202, job_id.as_str(), Some("true")),
            "a retried 409 replays the job: {retried:?}"
        );
    }
    assert_eq!(job_count(&stack).await, 1, "one key, one job");
}

/// Fifty concurrent initiates of one tenant over two intakes, with `MAX_ACTIVE_JOBS_PER_TENANT=10`
/// and no processor: exactly ten are accepted (and hold the tenant's slots) and forty are refused
/// with 429 `TOO_MANY_ACTIVE_JOBS` and `Retry-After`; once a processor has completed the ten,
/// their slots are released at once (far within the lease) and ten new concurrent initiates are
/// all accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_initiates_over_two_intakes_start_exactly_ten_and_completed_jobs_free_their_slots() {
    init_logs();
    let tenant = "crowd";
    let file_id: u64 = 70_040;
    let mut stack = queue_only_stack(&[("MAX_ACTIVE_JOBS_PER_TENANT", "10")]).await;
    let second = OtherIntake::start(&stack).await;
    stack.put_file(file_id, 128).await.unwrap();
    let bearer = stack.bearer(tenant).await.unwrap();
    let limits = limits_bucket(&stack).await;
    let urls = [stack.url(INITIATE), second.url(INITIATE)];
    let body = json!({ "file_ids": [file_id] });

    let answers = initiate_concurrently(&stack.http, &urls, &bearer, &body, 50).await;
    let accepted = accepted_ids(&answers);
    assert_eq!(accepted.len(), 10, "{:?}", summary(&answers));
    for refused in answers.iter().filter(|answer| answer.status != 202) {
        refused.assert_problem(429, "TOO_MANY_ACTIVE_JOBS");
        assert!(refused.retry_after() >= 1, "{refused:?}");
    }
    assert_eq!(
        active_slots(&limits, tenant).await,
        accepted.iter().cloned().collect::<BTreeSet<_>>(),
        "the accepted jobs hold the tenant's slots"
    );

    stack.start_processor(&[]).await.unwrap();
    for job_id in &accepted {
        assert_eq!(
            stack.wait_for_terminal(tenant, job_id).await.unwrap()["status"],
            "completed"
        );
    }
    let completed = Instant::now();
    wait_until("the completed jobs' slots to be released", RELEASE_PATIENCE, || {
        slots_empty(&limits, tenant)
    })
    .await
    .unwrap();
    eprintln!("slots released {:?} after the last job completed", completed.elapsed());

    let again = initiate_concurrently(&stack.http, &urls, &bearer, &body, 10).await;
    assert_eq!(accepted_ids(&again).len(), 10, "{:?}", summary(&again));
}

/// A tenant at its limit (no processor) is refused an eleventh job until it cancels one: the
/// cancelled job's slot is released at once (far within the default 60 s lease); the refused
/// request's `Idempotency-Key` was not remembered, so its retry starts a fresh job; and then the
/// limit holds again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_queued_job_frees_its_slot_at_once_and_a_refused_request_is_retried_with_its_key() {
    init_logs();
    let tenant = "canceller";
    let stack = queue_only_stack(&[("MAX_ACTIVE_JOBS_PER_TENANT", "10")]).await;
    let bearer = stack.bearer(tenant).await.unwrap();
    let limits = limits_bucket(&stack).await;
    let url = stack.url(INITIATE);
    let body = json!({ "file_ids": [70_050] });
    let mut job_ids = Vec::new();
    for _ in 0..10 {
        job_ids.push(stack.initiate(tenant, &[70_050]).await.unwrap());
    }
    let key = HeaderValue::from_static("eleventh");
    let eleventh = post(&stack.http, &url, &bearer, Some(&key), &body).await;
    eleventh.assert_problem(429, "TOO_MANY_ACTIVE_JOBS");
    assert!(eleventh.retry_after() >= 1, "{eleventh:?}");

    let cancelled = &job_ids[0];
    let cancel = stack
        .http
        .delete(stack.url(&format!("/v1/download/{cancelled}")))
        .header("Authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 202);
    let cancelled_at = Instant::now();
    wait_until("the cancelled job's slot to be released", RELEASE_PATIENCE, || {
        slot_released(&limits, tenant, cancelled)
    })
    .await
    .unwrap();
    eprintln!("slot released {:?} after the cancel", cancelled_at.elapsed());

    let retried = post(&stack.http, &url, &bearer, Some(&key), &body).await;
    assert_eq!(
        (retried.status, retried.header(REPLAYED)),
        (202, None),
        "the refusal was not remembered: {retried:?}"
    );
    assert!(
        !job_ids.contains(&retried.job_id().to_string()),
        "a fresh job: {retried:?}"
    );
    post(&stack.http, &url, &bearer, None, &body)
        .await
        .assert_problem(429, "TOO_MANY_ACTIVE_JOBS");
}

/// An intake killed (`kill -9`) in the middle of a burst of initiates, and a slot whose job was
/// never stored (what such a kill can leave; forged here so the healing path surely runs), cost
/// the tenant nothing beyond `ACTIVE_JOB_LEASE_SECONDS`: right after the kill the orphan still
/// counts (at most nine of ten concurrent initiates at the surviving intake are accepted), and
/// within the lease and a margin the surviving intake accepts ten concurrent initiates again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_left_by_an_intake_killed_mid_request_heal_within_the_lease() {
    init_logs();
    let tenant = "survivor";
    let file_id: u64 = 70_060;
    let lease = Duration::from_secs(6);
    let request_timeout = Duration::from_secs(5);
    let mut stack = Stack::servers_only(&[
        ("ACTIVE_JOB_LEASE_SECONDS", "6"),
        ("REQUEST_TIMEOUT_MS", "5000"),
        ("START_WAIT_MS", "3000"),
        ("MAX_ACTIVE_JOBS_PER_TENANT", "10"),
    ])
    .await
    .unwrap();
    stack.put_file(file_id, 64).await.unwrap();
    // Intake A, to be killed, with a processor, the presigner and a notifier, as processes...
    let mut fleet = ServiceFleet::start(&stack, &[]).await.unwrap();
    // ...and intake B, the survivor, in-process.
    stack.start_intake().await.unwrap();
    let bearer = stack.bearer(tenant).await.unwrap();
    let limits = limits_bucket(&stack).await;
    let body = json!({ "file_ids": [file_id] });

    // No job ends until the counts are checked: the processor waits.
    fleet.terminate(Kind::Processor).await.unwrap();
    let orphan = uuid::Uuid::now_v7().to_string();
    forge_slot(&limits, tenant, &orphan, lease).await;
    let forged = Instant::now();

    // A burst at A, killed as soon as its first answer is out.
    let mut burst: FuturesUnordered<JoinHandle<Result<Answer, reqwest::Error>>> = (0..12)
        .map(|_| {
            let (client, target, authorization, payload) =
                (stack.http.clone(), fleet.url(INITIATE), bearer.clone(), body.clone());
            tokio::spawn(async move { try_post(&client, &target, &authorization, None, &payload).await })
        })
        .collect();
    let mut outcomes = vec![burst.next().await.expect("a burst").unwrap()];
    fleet.kill(Kind::Intake);
    let killed = Instant::now();
    while let Some(outcome) = burst.next().await {
        outcomes.push(outcome.unwrap());
    }
    let answered: Vec<Answer> = outcomes.into_iter().filter_map(Result::ok).collect();
    let accepted_by_a = accepted_ids(&answered);
    eprintln!(
        "burst of 12 at the killed intake: {:?}, {} cut off by the kill",
        summary(&answered),
        12 - answered.len()
    );
    assert!(
        accepted_by_a.len() <= 9,
        "the orphan holds one of the ten slots: {:?}",
        summary(&answered)
    );

    // Right after the kill, every slot still counts, the orphan's too: it must, since a slot
    // younger than REQUEST_TIMEOUT_MS may belong to a request still being handled.
    let held = active_slots(&limits, tenant).await;
    assert!(held.contains(&orphan), "{held:?}");
    assert!(accepted_by_a.iter().all(|job_id| held.contains(job_id)), "{held:?}");
    let right_after = initiate_concurrently(&stack.http, &[stack.url(INITIATE)], &bearer, &body, 10).await;
    let checked_after = forged.elapsed();
    assert!(
        checked_after < request_timeout,
        "precondition: the check must end within REQUEST_TIMEOUT_MS of the forging, it took {checked_after:?}"
    );
    let accepted_right_after = accepted_ids(&right_after);
    assert_eq!(
        accepted_right_after.len(),
        10 - held.len(),
        "right after the kill the {} slots held still count: {:?}",
        held.len(),
        summary(&right_after)
    );
    for refused in right_after.iter().filter(|answer| answer.status != 202) {
        refused.assert_problem(429, "TOO_MANY_ACTIVE_JOBS");
    }
    assert!(active_slots(&limits, tenant).await.contains(&orphan));

    // The processor runs again: every job that exists ends and frees its slot.
    fleet.restart(Kind::Processor).await.unwrap();
    for job_id in accepted_by_a.iter().chain(&accepted_right_after) {
        assert_eq!(
            stack.wait_for_terminal(tenant, job_id).await.unwrap()["status"],
            "completed"
        );
    }

    // Every job the killed intake stored ends too (its answers were cut off, its records not).
    wait_until("every stored job to end", Duration::from_secs(30), || async {
        unfinished_jobs(&stack).await.is_empty()
    })
    .await
    .unwrap();

    // With the processor stopped again, initiates fill the tenant's slots one by one: nine fit
    // beside the orphan (fewer beside slots the killed intake took for jobs it never stored),
    // the last ones only once those are found lapsed at the cap and dropped.
    fleet.terminate(Kind::Processor).await.unwrap();
    let survivor = stack.url(INITIATE);
    let refused_at_the_cap = std::sync::atomic::AtomicUsize::new(0);
    wait_for(
        "ten of the tenant's jobs to hold its ten slots",
        lease * 2 + Duration::from_secs(5),
        || async {
            let answer = post(&stack.http, &survivor, &bearer, None, &body).await;
            if answer.status != 202 {
                answer.assert_problem(429, "TOO_MANY_ACTIVE_JOBS");
                refused_at_the_cap.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            // Healed: the ten slots are held by ten jobs that exist and wait, none by the orphan
            // or by a job the killed intake never stored.
            let held = active_slots(&limits, tenant).await;
            (held.len() == 10 && held.is_subset(&unfinished_jobs(&stack).await)).then_some(())
        },
    )
    .await
    .unwrap();
    let since_forged = forged.elapsed();
    assert!(
        refused_at_the_cap.into_inner() > 0,
        "the cap was reached while the orphan was within its lease, and held"
    );
    eprintln!(
        "ten slots back {:?} after the kill, {since_forged:?} after the orphan was forged (lease {lease:?})",
        killed.elapsed()
    );
    // The documented bound: a lost slot is back one lease after it was taken (plus the probe
    // that finds it lapsed), and not before (less the forging's own round trip, which this clock
    // started after).
    assert!(
        since_forged + Duration::from_millis(100) >= lease && since_forged < lease + Duration::from_secs(5),
        "the orphan healed {since_forged:?} after it was taken; the lease is {lease:?}"
    );
}

/// With `QUEUE_MAX_BACKLOG=20` and no processor, twenty initiates are accepted and the
/// twenty-first is refused with 503 `QUEUE_FULL` and `Retry-After` before anything is created
/// (the queue still holds twenty jobs, twenty records exist); once a processor drains the queue,
/// initiates are accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_at_queue_max_backlog_refuses_initiates_with_503_until_a_processor_drains_it() {
    init_logs();
    let tenant = "producer";
    let (mut stack, bearer, url, body) = queue_filled_by(
        tenant,
        70_070,
        20,
        &[("QUEUE_MAX_BACKLOG", "20"), ("MAX_ACTIVE_JOBS_PER_TENANT", "100")],
    )
    .await;

    let refused = post(&stack.http, &url, &bearer, None, &body).await;
    refused.assert_problem(503, "QUEUE_FULL");
    assert!(refused.retry_after() >= 1, "{refused:?}");
    assert_eq!(job_stream(&stack).await.state.messages, 20, "nothing was queued");
    assert_eq!(job_count(&stack).await, 20, "nothing was stored");

    stack.start_processor(&[]).await.unwrap();
    let draining = Instant::now();
    let accepted = wait_for("an initiate to be accepted again", DRAIN_PATIENCE, || {
        accepted_unless_queue_full(&stack.http, &url, &bearer, &body)
    })
    .await
    .unwrap();
    eprintln!("accepted again {:?} after a processor started", draining.elapsed());
    assert_eq!(
        stack.wait_for_terminal(tenant, accepted.job_id()).await.unwrap()["status"],
        "completed"
    );
}

/// The job stream's hard limit (`QUEUE_MAX_MESSAGES=5`, with a soft backlog of 1000 that lets
/// everything through) refuses the sixth publish: the initiate answers 503 `QUEUE_FULL` with
/// `Retry-After` and leaves no job record behind; every service's provisioning keeps the limit,
/// and once a processor drains the queue initiates are accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stream_at_queue_max_messages_refuses_the_job_with_503_and_leaves_no_record() {
    init_logs();
    let tenant = "filler";
    let (mut stack, bearer, url, body) = queue_filled_by(
        tenant,
        70_080,
        5,
        &[("QUEUE_MAX_MESSAGES", "5"), ("QUEUE_MAX_BACKLOG", "1000")],
    )
    .await;

    let sent = Instant::now();
    let refused = post(&stack.http, &url, &bearer, None, &body).await;
    eprintln!("the publish into a full stream was refused in {:?}", sent.elapsed());
    refused.assert_problem(503, "QUEUE_FULL");
    assert!(refused.retry_after() >= 1, "{refused:?}");
    assert_eq!(job_count(&stack).await, 5, "the refused job left no record");
    let stream = job_stream(&stack).await;
    assert_eq!(stream.state.messages, 5);
    assert_eq!(stream.config.max_messages, 5);

    // The processor's provisioning reads the same limit.
    stack.start_processor(&[]).await.unwrap();
    assert_eq!(job_stream(&stack).await.config.max_messages, 5);
    let accepted = wait_for("an initiate to be accepted again", DRAIN_PATIENCE, || {
        accepted_unless_queue_full(&stack.http, &url, &bearer, &body)
    })
    .await
    .unwrap();
    assert_eq!(
        stack.wait_for_terminal(tenant, accepted.job_id()).await.unwrap()["status"],
        "completed"
    );
}

/// Two intakes share one budget per client through NATS: of 300 requests alternating between
/// them (`RATE_LIMIT_MAX_REQUESTS=100` per 600 s: a burst of 100, then one more per 6 s), 100
/// and at most the refills since are admitted in all; every answer carries `RateLimit-Limit`,
/// `-Remaining`, `-Reset` and the draft's `RateLimit-Policy` and `RateLimit`, the remaining
/// budget counts down across intakes, refusals are 429 `RATE_LIMITED` with `Retry-After`, and
/// `/health` still answers on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_intakes_share_one_rate_limit_budget_per_client() {
    init_logs();
    let stack = queue_only_stack(&[("RATE_LIMIT_MAX_REQUESTS", "100"), ("RATE_LIMIT_WINDOW_MS", "600000")]).await;
    let second = OtherIntake::start(&stack).await;
    let bearer = stack.bearer("chatty").await.unwrap();
    // A job id from a day ago: a young missing job is looked for a few seconds before its 404.
    let day_old = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        (chrono::Utc::now().timestamp() - 86_400) as u64,
        0,
    ));
    let status_path = format!("/v1/download/status/{day_old}");
    let urls = [stack.url(&status_path), second.url(&status_path)];
    let total = 300;
    let started = Instant::now();

    // One after the other, A, B, A: one budget, counted down across intakes.
    let mut answers = Vec::new();
    for index in 0..3 {
        answers.push(get(&stack.http, &urls[index % 2], &bearer).await);
    }
    let remaining: Vec<u64> = answers
        .iter()
        .map(|answer| answer.header_number("ratelimit-remaining"))
        .collect();
    assert_eq!(remaining[0], 99, "{:?}", answers[0]);
    assert!(
        remaining.windows(2).all(|pair| pair[1] < pair[0]),
        "the budget counts down across intakes: {remaining:?}"
    );
    for answer in &answers {
        assert_eq!(answer.status, 404, "admitted (the job does not exist): {answer:?}");
    }

    // The rest concurrently, in batches of 20, alternating.
    for batch_start in (answers.len()..total).step_by(20) {
        let batch_end = (batch_start + 20).min(total);
        let batch = futures::future::join_all(
            (batch_start..batch_end).map(|index| get(&stack.http, &urls[index % 2], &bearer)),
        )
        .await;
        answers.extend(batch);
    }
    let elapsed = started.elapsed();
    assert_eq!(answers.len(), total);
    let admitted = answers.iter().filter(|answer| answer.status != 429).count();
    let refills = (elapsed.as_secs_f64() / 6.0).floor() as usize;
    eprintln!("{admitted} of {total} requests admitted by two intakes in {elapsed:?}");
    assert!(
        (100..=100 + 1 + refills).contains(&admitted),
        "{admitted} admitted in {elapsed:?}: {:?}",
        summary(&answers)
    );
    for answer in &answers {
        assert!(matches!(answer.status, 404 | 429), "{answer:?}");
        assert_rate_limit_headers(answer);
    }
    let refused = answers
        .iter()
        .find(|answer| answer.status == 429)
        .expect("the budget ran out");
    refused.assert_problem(429, "RATE_LIMITED");
    assert!(refused.retry_after() >= 1, "{refused:?}");
    assert_eq!(refused.header("ratelimit-remaining"), Some("0"), "{refused:?}");

    for health in [stack.url("/health"), second.url("/health")] {
        let response = stack.http.get(&health).send().await.unwrap();
        assert_eq!(response.status(), 200, "{health} is never limited");
    }
}

/// With NATS unreachable the rate limit still holds, on each intake's own state: requests that
/// need no NATS (the banner) are answered within the fallback's half second rather than hang,
/// the budget's requests pass and the next is refused with 429 and `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_down_each_intake_keeps_limiting_on_its_own_state() {
    init_logs();
    let mut stack = queue_only_stack(&[("RATE_LIMIT_MAX_REQUESTS", "3"), ("RATE_LIMIT_WINDOW_MS", "600000")]).await;
    stack.nats.stop();
    let banner = stack.url("/");
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let sent = Instant::now();
        let response = stack.http.get(&banner).send().await.unwrap();
        let took = sent.elapsed();
        assert!(took < Duration::from_secs(2), "an answer took {took:?} with NATS down");
        let status = response.status().as_u16();
        if status == 429 {
            let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            assert!(retry_after >= 1);
            assert_eq!(response.headers()["ratelimit-remaining"], "0");
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    // The fallback shows: the three decisions that went to NATS and came back alone are counted
    // (the registry is the test process's, so other tests may add to it, never take away).
    let metrics = stack
        .http
        .get(stack.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let local = crate::telemetry::sample(&metrics, "download_intake_rate_limit_local_decisions_total")
        .expect("the fallback counter is exported");
    assert!(local >= 3.0, "{local} local decisions counted");
}

/// NATS, S3, the presigner and one intake; no processor, so accepted jobs stay queued.
async fn queue_only_stack(overrides: &[(&str, &str)]) -> Stack {
    let mut stack = Stack::servers_only(overrides).await.unwrap();
    stack.start_presigner().await.unwrap();
    stack.start_intake().await.unwrap();
    stack
}

/// A stack with no processor where `tenant` has queued `jobs` jobs of `file_id` (which exists);
/// its bearer, the initiate URL and that job's body.
async fn queue_filled_by(
    tenant: &str,
    file_id: u64,
    jobs: usize,
    overrides: &[(&str, &str)],
) -> (Stack, String, String, Value) {
    let stack = queue_only_stack(overrides).await;
    stack.put_file(file_id, 64).await.unwrap();
    for _ in 0..jobs {
        stack.initiate(tenant, &[file_id]).await.unwrap();
    }
    let bearer = stack.bearer(tenant).await.unwrap();
    let url = stack.url(INITIATE);
    (stack, bearer, url, json!({ "file_ids": [file_id] }))
}

/// A second intake on the stack's servers and settings, in-process on a free port, as another
/// replica behind the load balancer; stopped when dropped.
struct OtherIntake {
    base_url: String,
    stop: CancellationToken,
    _task: JoinHandle<anyhow::Result<()>>,
}

impl OtherIntake {
    async fn start(stack: &Stack) -> Self {
        let settings = intake::Settings::from_env(&stack.env_as(NatsUser::Intake)).unwrap();
        let application = intake::Application::build(settings).await.unwrap();
        let base_url = format!("http://{}", application.local_addr());
        let stop = CancellationToken::new();
        let task = tokio::spawn(application.run_until_stopped(stop.clone()));
        OtherIntake {
            base_url,
            stop,
            _task: task,
        }
    }

    /// An absolute URL of this intake.
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }
}

impl Drop for OtherIntake {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What a client saw of one answer: its status, headers and JSON body (`Null` when none).
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    async fn read(response: reqwest::Response) -> Result<Self, reqwest::Error> {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await?;
        Ok(Answer {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// A header holding a whole number; panics when it is missing or not one.
    fn header_number(&self, name: &str) -> u64 {
        self.header(name)
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no whole number in {name}: {self:?}"))
    }

    /// `Retry-After` in seconds.
    fn retry_after(&self) -> u64 {
        self.header_number("retry-after")
    }

    /// The body's `jobId`; panics when there is none.
    fn job_id(&self) -> &str {
        self.body["jobId"]
            .as_str()
            .unwrap_or_else(|| panic!("no jobId: {self:?}"))
    }

    /// Asserts a problem+json answer of `status` and `code`; returns the problem.
    fn assert_problem(&self, status: u16, code: &str) -> &Value {
        assert_eq!(
            (self.status, self.body["code"].as_str()),
            (status, Some(code)),
            "{self:?}"
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{self:?}"
        );
        &self.body
    }
}

/// `POST url` with `bearer`, a JSON `body` and, when given, an `Idempotency-Key`.
async fn try_post(
    http: &reqwest::Client,
    url: &str,
    bearer: &str,
    key: Option<&HeaderValue>,
    body: &Value,
) -> Result<Answer, reqwest::Error> {
    let mut request = http.post(url).header("Authorization", bearer).json(body);
    if let Some(key) = key {
        request = request.header(IDEMPOTENCY_KEY, key.clone());
    }
    Answer::read(request.send().await?).await
}

/// [`try_post`] to an intake that answers.
async fn post(http: &reqwest::Client, url: &str, bearer: &str, key: Option<&HeaderValue>, body: &Value) -> Answer {
    try_post(http, url, bearer, key, body)
        .await
        .unwrap_or_else(|error| panic!("POST {url} got no answer: {error}"))
}

/// `GET url` with `bearer`.
async fn get(http: &reqwest::Client, url: &str, bearer: &str) -> Answer {
    let response = http
        .get(url)
        .header("Authorization", bearer)
        .send()
        .await
        .unwrap_or_else(|error| panic!("GET {url} got no answer: {error}"));
    Answer::read(response).await.unwrap()
}

/// `count` concurrent initiates of `body`, the n-th sent to `urls[n % urls.len()]`.
async fn initiate_concurrently(
    http: &reqwest::Client,
    urls: &[String],
    bearer: &str,
    body: &Value,
    count: usize,
) -> Vec<Answer> {
    futures::future::join_all((0..count).map(|index| post(http, &urls[index % urls.len()], bearer, None, body))).await
}

/// The job ids of the accepted (202) answers.
fn accepted_ids(answers: &[Answer]) -> Vec<String> {
    answers
        .iter()
        .filter(|answer| answer.status == 202)
        .map(|answer| answer.job_id().to_string())
        .collect()
}

/// How many answers of each status and problem code, for failure messages.
fn summary(answers: &[Answer]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for answer in answers {
        let label = match answer.body["code"].as_str() {
            Some(code) => format!("{} {code}", answer.status),
            None => answer.status.to_string(),
        };
        *counts.entry(label).or_insert(0) += 1;
    }
    counts
}

/// One probe of the TTL test: the same request again; `None` while it is a replay of
/// `first_job`, else how long after `first_sent` the new answer came, and the answer.
async fn answer_unless_replayed(
    http: &reqwest::Client,
    url: &str,
    bearer: &str,
    key: &HeaderValue,
    body: &Value,
    first_job: &str,
    first_sent: Instant,
) -> Option<(Duration, Answer)> {
    let answer = post(http, url, bearer, Some(key), body).await;
    let answered_after = first_sent.elapsed();
    assert_eq!(answer.status, 202, "{answer:?}");
    if answer.job_id() != first_job {
        return Some((answered_after, answer));
    }
    assert_eq!(
        answer.header(REPLAYED),
        Some("true"),
        "the first job again, so a replay: {answer:?}"
    );
    None
}

/// One probe of the backpressure tests: an initiate, `Some` once accepted; while refused, the
/// refusal must be 503 `QUEUE_FULL`.
async fn accepted_unless_queue_full(http: &reqwest::Client, url: &str, bearer: &str, body: &Value) -> Option<Answer> {
    let answer = post(http, url, bearer, None, body).await;
    if answer.status == 202 {
        return Some(answer);
    }
    answer.assert_problem(503, "QUEUE_FULL");
    None
}

/// Every job: a record in the jobs bucket (keys that are job ids; not the stats key), or a
/// message in the work queue that holds one until its claim.
async fn job_count(stack: &Stack) -> usize {
    let jetstream = jetstream::new(stack.nats_client().await.unwrap());
    let jobs = jetstream.get_key_value(names::JOBS_BUCKET).await.unwrap();
    let keys: Vec<String> = jobs.keys().await.unwrap().try_collect().await.unwrap();
    let mut ids = system_tests::queue::queued_job_ids(&jetstream).await.unwrap();
    ids.extend(keys.into_iter().filter(|key| JobId::parse(key).is_some()));
    ids.len()
}

/// The ids of the jobs not in a terminal state: queued ones not claimed yet (a message without
/// a record), and records queued or processing.
async fn unfinished_jobs(stack: &Stack) -> BTreeSet<String> {
    let jetstream = jetstream::new(stack.nats_client().await.unwrap());
    let jobs = jetstream.get_key_value(names::JOBS_BUCKET).await.unwrap();
    let keys: Vec<String> = jobs.keys().await.unwrap().try_collect().await.unwrap();
    let mut unfinished = BTreeSet::new();
    for queued in system_tests::queue::queued_job_ids(&jetstream).await.unwrap() {
        if jobs.entry(&queued).await.unwrap().is_none() {
            unfinished.insert(queued);
        }
    }
    for key in keys.into_iter().filter(|key| JobId::parse(key).is_some()) {
        if let Some(value) = jobs.get(&key).await.unwrap() {
            let record: Value = serde_json::from_slice(&value).unwrap();
            if matches!(record["status"].as_str(), Some("queued" | "processing")) {
                unfinished.insert(key);
            }
        }
    }
    unfinished
}

/// The job stream's configuration and state.
async fn job_stream(stack: &Stack) -> jetstream::stream::Info {
    let jetstream = jetstream::new(stack.nats_client().await.unwrap());
    let stream = jetstream.get_stream(names::JOBS_STREAM).await.unwrap();
    stream.get_info().await.unwrap()
}

/// The intakes' limits bucket, as the test's `ops` user (which may write anything).
async fn limits_bucket(stack: &Stack) -> kv::Store {
    jetstream::new(stack.nats_client().await.unwrap())
        .get_key_value(LIMITS_BUCKET)
        .await
        .unwrap()
}

/// `active.<lowercase hex of the tenant's bytes>`: the key of a tenant's slots.
fn active_key(tenant: &str) -> String {
    let hex: String = tenant.bytes().map(|byte| format!("{byte:02x}")).collect();
    format!("active.{hex}")
}

/// The job ids holding `tenant`'s slots (`{"jobs": {"<jobId>": {...}}}`; none when the key is
/// missing or deleted).
async fn active_slots(limits: &kv::Store, tenant: &str) -> BTreeSet<String> {
    let Some(value) = limits.get(active_key(tenant)).await.unwrap() else {
        return BTreeSet::new();
    };
    let slots: Value = serde_json::from_slice(&value).expect("a tenant's slots are JSON");
    slots["jobs"]
        .as_object()
        .map(|jobs| jobs.keys().cloned().collect())
        .unwrap_or_default()
}

/// Whether `tenant` holds no slot.
async fn slots_empty(limits: &kv::Store, tenant: &str) -> bool {
    active_slots(limits, tenant).await.is_empty()
}

/// Whether `job_id` no longer holds one of `tenant`'s slots.
async fn slot_released(limits: &kv::Store, tenant: &str, job_id: &str) -> bool {
    !active_slots(limits, tenant).await.contains(job_id)
}

/// Adds to `tenant`'s slots one held by `job_id` since now, with a lease of `lease`, keeping the
/// slots already there (a compare-and-set on the revision read).
async fn forge_slot(limits: &kv::Store, tenant: &str, job_id: &str, lease: Duration) {
    let key = active_key(tenant);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let lease_ms = i64::try_from(lease.as_millis()).expect("a short lease");
    let current = limits.entry(key.as_str()).await.unwrap();
    let mut slots = match &current {
        Some(stored) if stored.operation == kv::Operation::Put => {
            serde_json::from_slice::<Value>(&stored.value).expect("a tenant's slots are JSON")
        }
        _ => json!({ "jobs": {} }),
    };
    slots["jobs"][job_id] = json!({ "since": now_ms, "leaseUntil": now_ms + lease_ms });
    let value = bytes::Bytes::from(serde_json::to_vec(&slots).unwrap());
    match current {
        Some(stored) => {
            limits.update(&key, value, stored.revision).await.unwrap();
        }
        None => {
            limits.create(&key, value).await.unwrap();
        }
    }
}

/// Asserts the rate-limit headers of an answer: `RateLimit-Limit` 100, `RateLimit-Remaining`,
/// `RateLimit-Reset`, `RateLimit-Policy: "default";q=100;w=600` and
/// `RateLimit: "default";r=<remaining>;t=<seconds>`.
fn assert_rate_limit_headers(answer: &Answer) {
    assert_eq!(answer.header("ratelimit-limit"), Some("100"), "{answer:?}");
    let remaining = answer.header_number("ratelimit-remaining");
    answer.header_number("ratelimit-reset");
    assert_eq!(
        answer.header("ratelimit-policy"),
        Some("\"default\";q=100;w=600"),
        "{answer:?}"
    );
    let rate_limit = answer
        .header("ratelimit")
        .unwrap_or_else(|| panic!("no RateLimit: {answer:?}"));
    let parameters: BTreeMap<&str, &str> = rate_limit
        .strip_prefix("\"default\";")
        .unwrap_or_else(|| panic!("RateLimit of another policy: {rate_limit}"))
        .split(';')
        .filter_map(|parameter| parameter.split_once('='))
        .collect();
    assert_eq!(
        parameters.get("r").and_then(|value| value.parse::<u64>().ok()),
        Some(remaining),
        "{rate_limit} vs RateLimit-Remaining {remaining}"
    );
    assert!(
        parameters.get("t").is_some_and(|value| value.parse::<u64>().is_ok()),
        "{rate_limit}"
    );
}
