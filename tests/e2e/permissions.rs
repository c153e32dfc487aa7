//! Every service connects to NATS as its own user with the subject permissions of
//! `nats/auth.conf`: each can do its job and is refused what is not its job, and a whole job runs
//! with every service as its own user without the server refusing anything.
//!
//! As in a least-privilege deployment, the services create nothing: the admin user creates every
//! stream, bucket and durable consumer (`<service> provision`, `download-admin`), and each service
//! opens them (`NATS_PROVISION=false`). A user that may create or update a stream could give it
//! sources from any other stream and so read or write everything; the tests try exactly that as
//! the notifier and the processor, and see it refused.
//!
//! A refused publish or subscription is dropped by the server, which tells the client
//! asynchronously (`Permissions Violation for Publish to "..."`): a refused request or
//! JetStream call gets no answer. So each refusal is asserted twice: the call fails (no answer
//! within a short timeout), and the server's error for exactly that subject reaches the client.
//! The outcome is then checked as an operator sees it.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::service::ServiceExt;
use common::config::{Env, NatsSettings};
use common::identity::admin::IdentityBuckets;
use common::messages::JobMessage;
use common::nats::{JetStreamHandles, Resource, Topology};
use common::store::JobStore;
use common::{JobId, JobRecord, names};
use futures::StreamExt;
use system_tests::receiver::Receiver;
use system_tests::servers::{NatsServer, NatsUser, S3Server};
use system_tests::sse::SseReader;
use system_tests::wait::wait_for;
use tokio_util::sync::CancellationToken;

use crate::init_logs;

/// How long a call that the server refuses waits for the answer that never comes.
const REFUSED_CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long anything that should happen may take.
const PATIENCE: Duration = Duration::from_secs(30);

/// A connection as one user with a service's connection settings (user, password, inbox
/// prefix `_INBOX_<user>`), reporting the server's errors on a channel.
struct Connection {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    server_errors: tokio::sync::mpsc::UnboundedReceiver<String>,
    server_errors_seen: Vec<String>,
    /// How the server's log names the refusals this test provoked and saw (`Subject "..."`).
    refused: Vec<String>,
}

impl Connection {
    /// A JetStream publish of `{}` to `subject`, its ack awaited (a refused one never gets one).
    async fn publish_acked(&self, subject: &str) -> Result<(), async_nats::Error> {
        self.jetstream
            .publish(subject.to_string(), "{}".into())
            .await?
            .await
            .map(drop)
            .map_err(async_nats::Error::from)
    }

    async fn open(server: &NatsServer, user: NatsUser) -> Self {
        let (sender, server_errors) = tokio::sync::mpsc::unbounded_channel();
        let client = server
            .credentials()
            .connect_options(user)
            .name(format!("permissions-test-{}", user.name()))
            .event_callback(move |event| {
                let sender = sender.clone();
                async move {
                    if let async_nats::Event::ServerError(error) = event {
                        let _ = sender.send(error.to_string());
                    }
                }
            })
            .connect(server.url())
            .await
            .unwrap_or_else(|error| panic!("{} connects: {error}", user.name()));
        let mut jetstream = jetstream::new(client.clone());
        jetstream.set_timeout(REFUSED_CALL_TIMEOUT);
        Connection {
            client,
            jetstream,
            server_errors,
            server_errors_seen: Vec::new(),
            refused: Vec::new(),
        }
    }

    /// Waits for the server to report that it refused `action` ("publish to" or "subscription
    /// to") on a subject starting with `subject_start` (a whole subject ends with its `"`).
    async fn expect_refused(&mut self, action: &str, subject_start: &str) {
        let expected = format!("permissions violation for {action} \"{subject_start}").to_lowercase();
        let seen = |errors: &[String]| errors.iter().any(|error| error.to_lowercase().contains(&expected));
        let found = tokio::time::timeout(PATIENCE, async {
            while !seen(&self.server_errors_seen) {
                match self.server_errors.recv().await {
                    Some(error) => self.server_errors_seen.push(error),
                    None => return false,
                }
            }
            true
        })
        .await;
        assert_eq!(found, Ok(true), "the server did not report: {expected}");
        self.refused.push(format!("Subject \"{subject_start}"));
    }

    async fn expect_refused_publish(&mut self, subject: &str) {
        self.expect_refused("publish to", &format!("{subject}\"")).await;
    }

    async fn expect_refused_subscription(&mut self, subject: &str) {
        self.expect_refused("subscription to", &format!("{subject}\"")).await;
    }

    /// A user that may not make requests may not subscribe to its own reply inboxes either:
    /// async-nats subscribes to `<inbox prefix>.<id>.*` at the first request, and is refused.
    async fn expect_refused_own_inbox(&mut self, user: NatsUser) {
        let prefix = format!("{}.", common::nats::inbox_prefix(Some(user.name())));
        self.expect_refused("subscription to", &prefix).await;
    }
}

/// Fails if the server refused anything but what `provoking` connections provoked: an allowed
/// call refused silently (a clean-up whose error is ignored, say) shows here.
fn assert_nothing_else_refused(server: &NatsServer, provoking: &[&Connection]) {
    let provoked: Vec<&String> = provoking
        .iter()
        .flat_map(|connection| connection.refused.iter())
        .collect();
    let unexpected: Vec<String> = server
        .permission_violations()
        .into_iter()
        .filter(|line| !provoked.iter().any(|subject| line.contains(subject.as_str())))
        .collect();
    assert!(
        unexpected.is_empty(),
        "the server also refused:\n{}",
        unexpected.join("\n")
    );
}

/// A connection exactly as the services make it (`common::nats::connect` with `NATS_URL`,
/// `NATS_USER`, `NATS_PASSWORD`).
async fn connect_like_a_service(server: &NatsServer, user: NatsUser) -> async_nats::Client {
    let settings = NatsSettings::from_env(&Env::from_pairs(server.env_for(user))).unwrap();
    common::nats::connect(&settings, &format!("download-{}", user.name()))
        .await
        .unwrap_or_else(|error| panic!("{} connects: {error:?}", user.name()))
}

/// The admin creates or updates `resources` (and the job records), as `<service> provision`
/// run by the admin does.
async fn admin_provisions(server: &NatsServer, resources: &[Resource]) {
    let admin = connect_like_a_service(server, NatsUser::Admin).await;
    common::nats::provision(&admin, &Topology::default(), resources)
        .await
        .unwrap_or_else(|error| panic!("the admin provisions {resources:?}: {error:?}"));
}

/// The admin creates the notifiers' webhook consumers, as `notifier provision` does.
async fn admin_provisions_webhook_consumers(server: &NatsServer) {
    let admin = jetstream::new(connect_like_a_service(server, NatsUser::Admin).await);
    notifier::webhooks::provision_consumers(&admin, &notifier::webhooks::WebhookTopology::default())
        .await
        .expect("the admin provisions the webhook consumers");
}

/// Opens `resources` (and the job records) as `user`, as a service with `NATS_PROVISION=false`
/// does: they exist already.
async fn open_as(server: &NatsServer, user: NatsUser, resources: &[Resource]) -> JetStreamHandles {
    let client = connect_like_a_service(server, user).await;
    common::nats::open(&client, resources)
        .await
        .unwrap_or_else(|error| panic!("{} opens {resources:?}: {error:?}", user.name()))
}

/// The identity buckets as `download-admin` provisions and opens them, connected as the admin.
async fn admin_buckets(server: &NatsServer) -> IdentityBuckets {
    let settings = NatsSettings::from_env(&Env::from_pairs(server.env_for(NatsUser::Admin))).unwrap();
    let client = common::nats::connect(&settings, "download-admin").await.unwrap();
    IdentityBuckets::provision(&client, &Topology::streams(&settings))
        .await
        .expect("the admin provisions the identity buckets")
}

/// The configuration of `stream` as the server holds it, read as an operator.
async fn stream_config(ops: &jetstream::Context, stream: &str) -> stream::Config {
    ops.get_stream(stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone()
}

/// `config` with a source: the messages of `from` on `subject`, renamed to `renamed`.
fn sourcing(mut config: stream::Config, from: &str, subject: &str, renamed: &str) -> stream::Config {
    config.sources = Some(vec![stream::Source {
        name: from.to_string(),
        subject_transforms: vec![stream::SubjectTransform {
            source: subject.to_string(),
            destination: renamed.to_string(),
        }],
        ..Default::default()
    }]);
    config
}

/// The intake's job store: the admin provisions the intake's resources, the intake opens them.
async fn intake_store(server: &NatsServer) -> JobStore {
    admin_provisions(server, intake::NATS_RESOURCES).await;
    let handles = open_as(server, NatsUser::Intake, intake::NATS_RESOURCES).await;
    JobStore::new(handles.jetstream, handles.jobs)
}

/// The intake queues a job (its message holds its record), as it does for
/// `POST /v1/download/initiate`.
async fn intake_accepts_a_job(server: &NatsServer, owner: &str) -> JobRecord {
    accept_job(&intake_store(server).await, owner).await
}

async fn accept_job(store: &JobStore, owner: &str) -> JobRecord {
    let record = JobRecord::queued(JobId::new(), owner.into(), vec![70_000], None, 1, None);
    store
        .accept(&record, Duration::from_secs(10))
        .await
        .expect("the intake queues jobs");
    let queued = store.load(record.job_id).await.expect("the intake reads queued jobs");
    assert_eq!(queued.map(|queued| queued.record), Some(record.clone()));
    // A miss is confirmed through both streams' leaders.
    let missing = store.load_once(JobId::new()).await.expect("the intake confirms misses");
    assert!(missing.is_none());
    record
}

async fn job_consumer(jetstream: &jetstream::Context) -> consumer::Info {
    let mut consumer: consumer::PullConsumer = jetstream
        .get_consumer_from_stream(names::PROCESSOR_CONSUMER, names::JOBS_STREAM)
        .await
        .unwrap();
    consumer.info().await.unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_connects_without_a_password_of_the_configuration() {
    init_logs();
    let server = NatsServer::start().await.unwrap();
    let anonymous = async_nats::connect(server.url()).await;
    assert!(anonymous.is_err(), "a client without credentials was let in");
    let wrong = async_nats::ConnectOptions::with_user_and_password("ops".into(), "not-the-password".into())
        .connect(server.url())
        .await;
    assert!(wrong.is_err(), "a wrong password was accepted");
    server.client().await.expect("ops connects with its password");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_intake_queues_jobs_and_writes_records_but_cannot_consume_jobs() {
    init_logs();
    let server = NatsServer::start().await.unwrap();
    admin_provisions(&server, processor::NATS_RESOURCES).await;
    let store = intake_store(&server).await;
    let record = accept_job(&store, "alice").await;
    // It changes the record (an owner cancels) and publishes the change's event.
    let cancelled = store
        .update(record.job_id, |record| {
            record.cancel();
            true
        })
        .await
        .expect("the intake changes job records");
    assert!(matches!(cancelled, common::store::Change::Written(_)));

    let mut intake = Connection::open(&server, NatsUser::Intake).await;
    // It watches records, as the legacy `/start` does.
    let jobs = intake.jetstream.get_key_value(names::JOBS_BUCKET).await.unwrap();
    let mut watch = jobs.watch_with_history(record.job_id.to_string()).await.unwrap();
    let entry = tokio::time::timeout(PATIENCE, watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        JobRecord::from_json_bytes(&entry.value).unwrap().status,
        common::JobStatus::Cancelled
    );

    let consumer_info = format!(
        "$JS.API.CONSUMER.INFO.{}.{}",
        names::JOBS_STREAM,
        names::PROCESSOR_CONSUMER
    );
    let taken = intake
        .jetstream
        .get_consumer_from_stream::<consumer::pull::Config, _, _>(names::PROCESSOR_CONSUMER, names::JOBS_STREAM)
        .await;
    assert!(taken.is_err(), "the intake reached the processors' consumer");
    intake.expect_refused_publish(&consumer_info).await;

    let own_consumer = consumer::pull::Config {
        durable_name: Some("intake-takes-jobs".into()),
        ..Default::default()
    };
    let created = intake
        .jetstream
        .create_consumer_on_stream(own_consumer, names::JOBS_STREAM)
        .await;
    assert!(created.is_err(), "the intake created a consumer of jobs");
    intake
        .expect_refused_publish(&format!(
            "$JS.API.CONSUMER.CREATE.{}.intake-takes-jobs",
            names::JOBS_STREAM
        ))
        .await;

    let next = format!(
        "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
        names::JOBS_STREAM,
        names::PROCESSOR_CONSUMER
    );
    let fetched = tokio::time::timeout(
        REFUSED_CALL_TIMEOUT,
        intake
            .client
            .request(next.clone(), r#"{"batch":1,"no_wait":true}"#.into()),
    )
    .await;
    assert!(!matches!(fetched, Ok(Ok(_))), "the intake fetched a job");
    intake.expect_refused_publish(&next).await;

    // Nor can it change the job stream it publishes to (it provisions nothing).
    let ops = jetstream::new(server.client().await.unwrap());
    let jobs_stream_before = stream_config(&ops, names::JOBS_STREAM).await;
    let mut longer = jobs_stream_before.clone();
    longer.max_age = Duration::from_secs(365 * 24 * 3600);
    assert!(
        intake.jetstream.update_stream(&longer).await.is_err(),
        "the intake changed the job stream"
    );
    intake
        .expect_refused_publish(&format!("$JS.API.STREAM.UPDATE.{}", names::JOBS_STREAM))
        .await;
    assert_eq!(stream_config(&ops, names::JOBS_STREAM).await, jobs_stream_before);

    // Nor can it read another service's replies, or listen to the queue's subjects.
    let _sniffer = intake.client.subscribe("_INBOX_processor.>").await.unwrap();
    intake.expect_refused_subscription("_INBOX_processor.>").await;
    let _listener = intake.client.subscribe("downloads.jobs.>").await.unwrap();
    intake.expect_refused_subscription("downloads.jobs.>").await;

    // The job still waits for a processor, untouched, and its cancellation is in the events.
    let info = job_consumer(&ops).await;
    assert_eq!((info.num_pending, info.num_ack_pending), (1, 0));
    let ops_store = JobStore::new(ops.clone(), ops.get_key_value(names::JOBS_BUCKET).await.unwrap());
    let events = ops_store.events_after(record.job_id, 0).await.unwrap();
    assert_eq!(events.len(), 1);
    // The server's log names every refusal (what the end-to-end test looks for).
    let logged = server.permission_violations();
    assert!(
        logged
            .iter()
            .any(|line| line.contains("intake") && line.contains(&next)),
        "{logged:?}"
    );
    assert_nothing_else_refused(&server, &[&intake]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_processor_consumes_jobs_but_cannot_write_api_keys_or_tenants() {
    init_logs();
    let server = NatsServer::start().await.unwrap();
    // The admin creates the identity buckets and a tenant.
    let buckets = admin_buckets(&server).await;
    let (tenant, _key) = buckets.create_tenant("acme", "first key").await.unwrap();
    admin_provisions(&server, processor::NATS_RESOURCES).await;
    let handles = open_as(&server, NatsUser::Processor, processor::NATS_RESOURCES).await;
    let intake = intake_store(&server).await;
    let (first, second) = (accept_job(&intake, "acme").await, accept_job(&intake, "acme").await);

    // It pulls both jobs and changes the first one's record (publishing its event); it
    // acknowledges the first (the server confirms), and reads the second's message by sequence
    // and removes it, as it does for a job whose deliveries ran out.
    let consumer: consumer::PullConsumer = handles
        .jetstream
        .get_consumer_from_stream(names::PROCESSOR_CONSUMER, names::JOBS_STREAM)
        .await
        .unwrap();
    let mut batch = consumer
        .batch()
        .max_messages(2)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let first_message = batch.next().await.expect("a job is delivered").unwrap();
    let second_message = batch.next().await.expect("a job is delivered").unwrap();
    let job: JobMessage = serde_json::from_slice(&first_message.payload).unwrap();
    assert_eq!(job.job_id(), first.job_id);
    let store = JobStore::new(handles.jetstream.clone(), handles.jobs.clone());
    let changed = store
        .update(first.job_id, |record| {
            record.progress = 50;
            true
        })
        .await
        .expect("the processor changes job records");
    assert!(matches!(changed, common::store::Change::Written(_)));
    // It looks into the events stream directly, as its cancellation feed does when quiet.
    let waiting =
        common::consume::unhandled_for(&handles.jetstream, names::EVENTS_STREAM, "downloads.events.>", 0).await;
    assert!(waiting.is_some(), "the processor cannot look into the events stream");
    first_message
        .double_ack()
        .await
        .expect("the processor acknowledges jobs");
    let sequence = second_message.info().unwrap().stream_sequence;
    let jobs_stream = handles.jetstream.get_stream(names::JOBS_STREAM).await.unwrap();
    let stored = jobs_stream.get_raw_message(sequence).await.unwrap();
    let job: JobMessage = serde_json::from_slice(&stored.payload).unwrap();
    assert_eq!(job.job_id(), second.job_id);
    assert!(jobs_stream.delete_message(sequence).await.unwrap());

    let mut processor = Connection::open(&server, NatsUser::Processor).await;
    for (bucket, key) in [(names::API_KEYS_BUCKET, "rogue-key"), (names::TENANTS_BUCKET, "acme")] {
        let subject = format!("$KV.{bucket}.{key}");
        let written = processor.publish_acked(&subject).await;
        assert!(written.is_err(), "the processor wrote {subject}");
        processor.expect_refused_publish(&subject).await;
    }

    // As an operator sees it: no job waits, the identity buckets are as the admin left them.
    let ops = jetstream::new(server.client().await.unwrap());
    assert!(system_tests::queue::work_queue_empty(&ops).await);
    let keys = ops.get_key_value(names::API_KEYS_BUCKET).await.unwrap();
    assert_eq!(keys.get("rogue-key").await.unwrap(), None);
    let tenants = ops.get_key_value(names::TENANTS_BUCKET).await.unwrap();
    let stored: common::identity::TenantRecord =
        serde_json::from_slice(&tenants.get("acme").await.unwrap().unwrap()).unwrap();
    assert_eq!(stored.webhook_secrets.len(), tenant.webhook_secrets.len());
    assert_nothing_else_refused(&server, &[&processor]);
}

/// An accept whose message the server does not acknowledge (here: refused to a user that may
/// write records but not queue jobs, so the publish goes unanswered) may still have stored it.
/// The refusal fences the job off: a delete marker where its record would go, so a message
/// that landed after all reads as no job and its claim fails, as in the processor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accept_whose_message_goes_unanswered_fences_the_job_off_so_it_never_runs() {
    init_logs();
    let server = NatsServer::start().await.unwrap();
    admin_provisions(&server, processor::NATS_RESOURCES).await;
    let handles = open_as(&server, NatsUser::Processor, processor::NATS_RESOURCES).await;
    let store = JobStore::new(handles.jetstream, handles.jobs);
    let record = JobRecord::queued(JobId::new(), "alice".into(), vec![70_000], None, 1, None);
    let refused = store.accept(&record, Duration::from_secs(3)).await;
    match &refused {
        Err(error) if JobStore::is_transient(error) => {}
        other => panic!("expected a refusal that left nothing behind, got {other:?}"),
    }
    let ops = jetstream::new(server.client().await.unwrap());
    let bucket = ops.get_key_value(names::JOBS_BUCKET).await.unwrap();
    let marker = bucket
        .entry(record.job_id.to_string())
        .await
        .unwrap()
        .expect("a delete marker");
    assert_eq!(marker.operation, jetstream::kv::Operation::Delete);

    // The message lands after all (published here by an operator).
    let late = JobMessage::submitted(record.clone());
    ops.publish(late.subject(), late.to_json_bytes())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(store.load(record.job_id).await.unwrap().map(|found| found.record), None);
    let claim = store
        .update_from(record.job_id, common::store::Versioned::of_queued(&late), |record| {
            record.status = common::JobStatus::Processing;
            true
        })
        .await;
    assert!(
        matches!(claim, Err(common::store::StoreError::Removed(_))),
        "the claim of a fenced job fails: {claim:?}"
    );
    let marker = bucket
        .entry(record.job_id.to_string())
        .await
        .unwrap()
        .expect("a delete marker");
    assert_eq!(
        marker.operation,
        jetstream::kv::Operation::Delete,
        "nothing was written over it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_presigner_answers_presign_requests_but_cannot_queue_jobs_or_read_job_records() {
    init_logs();
    let server = NatsServer::start().await.unwrap();
    let record = intake_accepts_a_job(&server, "alice").await;
    let ops = jetstream::new(server.client().await.unwrap());
    let queued_before = ops
        .get_stream(names::JOBS_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;

    // The presigner's service, answering every request; the intake asks it.
    let mut presigner = Connection::open(&server, NatsUser::Presigner).await;
    let service = presigner
        .client
        .service_builder()
        .start(names::PRESIGNER_SERVICE, "0.0.1")
        .await
        .unwrap();
    let mut endpoint = service
        .group(names::PRESIGN_GROUP)
        .endpoint(names::PRESIGN_ENDPOINT)
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Some(request) = endpoint.next().await {
            let _ = request.respond(Ok("signed".into())).await;
        }
    });
    let intake = Connection::open(&server, NatsUser::Intake).await;
    let answer = wait_for("the presigner to answer the intake", PATIENCE, || async {
        tokio::time::timeout(
            REFUSED_CALL_TIMEOUT,
            intake.client.request(names::PRESIGN_SUBJECT, "{}".into()),
        )
        .await
        .ok()?
        .ok()
    })
    .await
    .unwrap();
    assert_eq!(answer.payload.as_ref(), b"signed");
    let ops_client = server.client().await.unwrap();
    let ping = ops_client
        .request(format!("$SRV.PING.{}", names::PRESIGNER_SERVICE), "".into())
        .await
        .expect("the presigner answers discovery");
    assert!(!ping.payload.is_empty());

    for subject in [
        names::JOB_SUBMITTED_SUBJECT.to_string(),
        names::job_submitted_subject(&JobId::new().to_string()),
    ] {
        let queued = presigner.publish_acked(&subject).await;
        assert!(queued.is_err(), "the presigner queued a job on {subject}");
        presigner.expect_refused_publish(&subject).await;
    }

    let read = format!(
        "$JS.API.DIRECT.GET.KV_{}.$KV.{}.{}",
        names::JOBS_BUCKET,
        names::JOBS_BUCKET,
        record.job_id
    );
    let answer = tokio::time::timeout(REFUSED_CALL_TIMEOUT, presigner.client.request(read.clone(), "".into())).await;
    assert!(!matches!(answer, Ok(Ok(_))), "the presigner read a job record");
    presigner.expect_refused_publish(&read).await;
    let records = format!("$KV.{}.>", names::JOBS_BUCKET);
    let _watch = presigner.client.subscribe(records.clone()).await.unwrap();
    presigner.expect_refused_subscription(&records).await;
    presigner.expect_refused_own_inbox(NatsUser::Presigner).await;

    let queued_after = ops
        .get_stream(names::JOBS_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(queued_after, queued_before);
    assert_nothing_else_refused(&server, &[&presigner]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notifier_reads_job_records_and_keeps_its_own_buckets_but_cannot_write_job_records() {
    init_logs();
    let server = NatsServer::start().await.unwrap();
    let intake = intake_store(&server).await;
    let queued = accept_job(&intake, "alice").await;
    let accepted = accept_job(&intake, "alice").await;
    let common::store::Change::Written(common::store::Versioned { record, .. }) = intake
        .update(accepted.job_id, |record| {
            record.cancel();
            true
        })
        .await
        .unwrap()
    else {
        panic!("the cancellation is written");
    };
    admin_provisions(&server, notifier::NATS_RESOURCES).await;
    let handles = open_as(&server, NatsUser::Notifier, notifier::NATS_RESOURCES).await;

    // It reads the record, the job's events, and writes leases and dead letters.
    let store = JobStore::new(handles.jetstream.clone(), handles.jobs.clone());
    let found = store
        .load(record.job_id)
        .await
        .unwrap()
        .expect("the notifier reads job records");
    assert_eq!(found.record, record);
    // A job not claimed yet, from its message (a direct get by its subject); and a job that does
    // not exist, which it looks for through both leaders too.
    let found = store
        .load(queued.job_id)
        .await
        .unwrap()
        .expect("the notifier reads queued jobs");
    assert_eq!((found.record, found.revision), (queued, 0));
    assert!(store.load_once(JobId::new()).await.unwrap().is_none());
    assert_eq!(store.events_after(record.job_id, 0).await.unwrap().len(), 1);
    // It looks into the events stream directly, as a live feed checking it is not stalled does.
    let waiting = common::consume::unhandled_for(
        &handles.jetstream,
        names::EVENTS_STREAM,
        names::EVENTS_STREAM_SUBJECTS,
        0,
    )
    .await;
    assert!(waiting.is_some(), "the notifier cannot look into the events stream");
    let leases = common::nats::bucket(&handles.jetstream, names::STREAM_LEASES_BUCKET)
        .await
        .unwrap();
    leases
        .put("user.616c696365", "{}".into())
        .await
        .expect("the notifier writes stream leases");
    let letter = notifier::webhooks::dead_letters::DeadLetter {
        webhook_id: format!("{}-1", record.job_id),
        url: "http://127.0.0.1:9/hook".into(),
        attempts: 3,
        last_error: "receiver answered 500".into(),
        failed_at: chrono::Utc::now(),
        event: common::messages::JobEvent::of_record(&record),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
    };
    let dead_letters = common::nats::bucket(&handles.jetstream, names::WEBHOOK_DEAD_LETTERS_BUCKET)
        .await
        .unwrap();
    dead_letters
        .put(&letter.webhook_id, serde_json::to_vec(&letter).unwrap().into())
        .await
        .expect("the notifier writes dead letters");
    // `notifier dead-letters list` and `replay --all`, as the notifier's user.
    let listed = notifier::webhooks::dead_letters::list(&handles.jetstream)
        .await
        .unwrap();
    assert_eq!(listed, vec![letter]);
    let replayed = notifier::webhooks::dead_letters::replay(&handles.jetstream, None)
        .await
        .unwrap();
    assert_eq!(replayed, 1);

    let mut notifier = Connection::open(&server, NatsUser::Notifier).await;
    let jobs = notifier.jetstream.get_key_value(names::JOBS_BUCKET).await.unwrap();
    let key = record.job_id.to_string();
    assert!(
        jobs.put(&key, "{}".into()).await.is_err(),
        "the notifier wrote a job record"
    );
    notifier
        .expect_refused_publish(&format!("$KV.{}.{key}", names::JOBS_BUCKET))
        .await;
    assert!(jobs.delete(&key).await.is_err(), "the notifier deleted a job record");
    notifier
        .expect_refused_publish(&format!("$KV.{}.{key}", names::JOBS_BUCKET))
        .await;

    let ops = jetstream::new(server.client().await.unwrap());
    let ops_store = JobStore::new(ops.clone(), ops.get_key_value(names::JOBS_BUCKET).await.unwrap());
    assert_eq!(ops_store.load(record.job_id).await.unwrap().unwrap().record, record);
    let mut replays = ops.get_stream(names::WEBHOOK_REPLAYS_STREAM).await.unwrap();
    assert_eq!(replays.info().await.unwrap().state.messages, 1);
    assert_nothing_else_refused(&server, &[&notifier]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notifier_cannot_give_any_stream_sources_to_forge_job_records() {
    init_logs();
    let server = NatsServer::start().await.unwrap();
    admin_provisions(&server, notifier::NATS_RESOURCES).await;
    let record = intake_accepts_a_job(&server, "alice").await;
    let handles = open_as(&server, NatsUser::Notifier, notifier::NATS_RESOURCES).await;
    let ops = jetstream::new(server.client().await.unwrap());
    let jobs_stream = format!("KV_{}", names::JOBS_BUCKET);
    let leases_stream = format!("KV_{}", names::STREAM_LEASES_BUCKET);
    let (jobs_before, leases_before) = (
        stream_config(&ops, &jobs_stream).await,
        stream_config(&ops, &leases_stream).await,
    );

    // The forgery: a "completed" record of alice's job, written where the notifier may write
    // (a stream lease), to be copied into the job records by a source.
    let mut forged = record.clone();
    forged.status = common::JobStatus::Completed;
    forged.progress = 100;
    let leases = common::nats::bucket(&handles.jetstream, names::STREAM_LEASES_BUCKET)
        .await
        .unwrap();
    leases
        .put("forged", serde_json::to_vec(&forged).unwrap().into())
        .await
        .expect("the notifier writes stream leases");

    let mut notifier = Connection::open(&server, NatsUser::Notifier).await;
    let record_subject = format!("$KV.{}.{}", names::JOBS_BUCKET, record.job_id);
    let forging = sourcing(
        jobs_before.clone(),
        &leases_stream,
        &format!("$KV.{}.forged", names::STREAM_LEASES_BUCKET),
        &record_subject,
    );
    assert!(
        notifier.jetstream.update_stream(&forging).await.is_err(),
        "the notifier gave the job records a source"
    );
    notifier
        .expect_refused_publish(&format!("$JS.API.STREAM.UPDATE.{jobs_stream}"))
        .await;

    // Nor a stream of its own making, nor one of its own buckets, reading the job records.
    let copy = stream::Config {
        name: "DOWNLOAD_FORGERIES".into(),
        sources: Some(vec![stream::Source {
            name: jobs_stream.clone(),
            ..Default::default()
        }]),
        ..Default::default()
    };
    assert!(
        notifier.jetstream.create_stream(&copy).await.is_err(),
        "the notifier created a stream"
    );
    notifier
        .expect_refused_publish("$JS.API.STREAM.CREATE.DOWNLOAD_FORGERIES")
        .await;
    let copying = sourcing(
        leases_before.clone(),
        &jobs_stream,
        &format!("$KV.{}.>", names::JOBS_BUCKET),
        &format!("$KV.{}.copied.>", names::STREAM_LEASES_BUCKET),
    );
    assert!(
        notifier.jetstream.update_stream(&copying).await.is_err(),
        "the notifier gave its stream leases a source"
    );
    notifier
        .expect_refused_publish(&format!("$JS.API.STREAM.UPDATE.{leases_stream}"))
        .await;

    // As an operator sees it: the streams are as the admin made them, and the record is alice's.
    assert_eq!(stream_config(&ops, &jobs_stream).await, jobs_before);
    assert_eq!(stream_config(&ops, &leases_stream).await, leases_before);
    assert!(ops.get_stream("DOWNLOAD_FORGERIES").await.is_err());
    let ops_store = JobStore::new(ops.clone(), ops.get_key_value(names::JOBS_BUCKET).await.unwrap());
    assert_eq!(ops_store.load(record.job_id).await.unwrap().unwrap().record, record);
    assert_nothing_else_refused(&server, &[&notifier]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_processor_cannot_copy_the_tenants_webhook_secrets_into_a_stream_it_reads() {
    init_logs();
    let server = NatsServer::start().await.unwrap();
    let buckets = admin_buckets(&server).await;
    buckets.create_tenant("acme", "first key").await.unwrap();
    admin_provisions(&server, processor::NATS_RESOURCES).await;
    let ops = jetstream::new(server.client().await.unwrap());
    let tenants_stream = format!("KV_{}", names::TENANTS_BUCKET);
    let jobs_stream = format!("KV_{}", names::JOBS_BUCKET);
    let (jobs_before, events_before) = (
        stream_config(&ops, &jobs_stream).await,
        stream_config(&ops, names::EVENTS_STREAM).await,
    );
    let jobs_messages_before = ops
        .get_stream(&jobs_stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;

    let mut processor = Connection::open(&server, NatsUser::Processor).await;
    // A new stream of the tenants, or the tenants copied into the job records or the events,
    // which the processor reads.
    let copy = stream::Config {
        name: "DOWNLOAD_TENANT_COPY".into(),
        sources: Some(vec![stream::Source {
            name: tenants_stream.clone(),
            ..Default::default()
        }]),
        ..Default::default()
    };
    assert!(
        processor.jetstream.create_stream(&copy).await.is_err(),
        "the processor created a stream"
    );
    processor
        .expect_refused_publish("$JS.API.STREAM.CREATE.DOWNLOAD_TENANT_COPY")
        .await;
    let tenants = format!("$KV.{}.*", names::TENANTS_BUCKET);
    let into_records = sourcing(
        jobs_before.clone(),
        &tenants_stream,
        &tenants,
        &format!("$KV.{}.tenant-{{{{wildcard(1)}}}}", names::JOBS_BUCKET),
    );
    assert!(
        processor.jetstream.update_stream(&into_records).await.is_err(),
        "the processor gave the job records a source"
    );
    processor
        .expect_refused_publish(&format!("$JS.API.STREAM.UPDATE.{jobs_stream}"))
        .await;
    let into_events = sourcing(
        events_before.clone(),
        &tenants_stream,
        &tenants,
        "downloads.events.tenant.{{wildcard(1)}}",
    );
    assert!(
        processor.jetstream.update_stream(&into_events).await.is_err(),
        "the processor gave the events a source"
    );
    processor
        .expect_refused_publish(&format!("$JS.API.STREAM.UPDATE.{}", names::EVENTS_STREAM))
        .await;

    // Nor may it change its own durable consumer (the admin provisions it from the settings).
    let mut longer_lease = common::nats::processor_consumer_config(&Topology::default());
    longer_lease.ack_wait = Duration::from_secs(3600);
    assert!(
        processor
            .jetstream
            .create_consumer_on_stream(longer_lease, names::JOBS_STREAM)
            .await
            .is_err(),
        "the processor changed its consumer"
    );
    processor
        .expect_refused(
            "publish to",
            &format!(
                "$JS.API.CONSUMER.CREATE.{}.{}",
                names::JOBS_STREAM,
                names::PROCESSOR_CONSUMER
            ),
        )
        .await;

    // As an operator sees it: nothing changed, and no tenant reached a stream the processor reads.
    assert_eq!(stream_config(&ops, &jobs_stream).await, jobs_before);
    assert_eq!(stream_config(&ops, names::EVENTS_STREAM).await, events_before);
    assert!(ops.get_stream("DOWNLOAD_TENANT_COPY").await.is_err());
    let jobs_messages_after = ops
        .get_stream(&jobs_stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(jobs_messages_after, jobs_messages_before);
    let consumer = job_consumer(&ops).await;
    assert_eq!(
        consumer.config.ack_wait,
        common::nats::processor_consumer_config(&Topology::default()).ack_wait
    );
    assert_nothing_else_refused(&server, &[&processor]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_delivering_into_another_stream_waits_for_a_listener_and_forges_no_record_or_job() {
    init_logs();
    let server = NatsServer::start().await.unwrap();
    admin_provisions(&server, notifier::NATS_RESOURCES).await;
    admin_provisions(&server, processor::NATS_RESOURCES).await;
    let record = intake_accepts_a_job(&server, "alice").await;
    let handles = open_as(&server, NatsUser::Notifier, notifier::NATS_RESOURCES).await;
    let ops_client = server.client().await.unwrap();
    let ops = jetstream::new(ops_client.clone());
    let pending_before = job_consumer(&ops).await.num_pending;

    // A forged "completed" record of alice's job in the dead letters (the notifier writes them),
    // and push consumers of the dead letters delivering it to the record's subject and to the
    // job queue's.
    let mut forged = record.clone();
    forged.status = common::JobStatus::Completed;
    let dead_letters = common::nats::bucket(&handles.jetstream, names::WEBHOOK_DEAD_LETTERS_BUCKET)
        .await
        .unwrap();
    dead_letters
        .put("forged", serde_json::to_vec(&forged).unwrap().into())
        .await
        .expect("the notifier writes dead letters");
    let forged_subject = format!("$KV.{}.forged", names::WEBHOOK_DEAD_LETTERS_BUCKET);
    let record_subject = format!("$KV.{}.{}", names::JOBS_BUCKET, record.job_id);
    let notifier = Connection::open(&server, NatsUser::Notifier).await;
    let mut witnesses = Vec::new();
    for deliver_subject in [record_subject.as_str(), names::JOB_SUBMITTED_SUBJECT] {
        let delivering = consumer::push::Config {
            deliver_subject: deliver_subject.to_string(),
            filter_subject: forged_subject.clone(),
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        };
        let mut created = notifier
            .jetstream
            .create_consumer_on_stream(delivering, format!("KV_{}", names::WEBHOOK_DEAD_LETTERS_BUCKET))
            .await
            .expect("the notifier creates consumers of its dead letters");
        // The server delivers only where a client listens: a stream's own subscription does not
        // count, and no service may subscribe there.
        assert!(!created.info().await.unwrap().push_bound, "{deliver_subject}");
        // An operator who listens there (`nats sub`) sets it off.
        let mut witness = ops_client.subscribe(deliver_subject.to_string()).await.unwrap();
        let delivered = tokio::time::timeout(PATIENCE, witness.next())
            .await
            .expect("the consumer delivers once a client listens")
            .unwrap();
        assert_eq!(delivered.payload, serde_json::to_vec(&forged).unwrap());
        witnesses.push(witness);
    }

    // The stream listening on the deliver subject stores the delivery, but under the message's
    // own subject (as a stream's sources do).
    for stream in [format!("KV_{}", names::JOBS_BUCKET), names::JOBS_STREAM.to_string()] {
        let stream = ops.get_stream(&stream).await.unwrap();
        wait_for("the delivery to be stored", PATIENCE, || async {
            stream.get_last_raw_message_by_subject(&forged_subject).await.ok()
        })
        .await
        .unwrap();
    }
    // So the record is alice's, and no processor is handed a job.
    let ops_store = JobStore::new(ops.clone(), ops.get_key_value(names::JOBS_BUCKET).await.unwrap());
    assert_eq!(ops_store.load(record.job_id).await.unwrap().unwrap().record, record);
    assert_eq!(job_consumer(&ops).await.num_pending, pending_before);
    assert_nothing_else_refused(&server, &[&notifier]);
}

/// A delivery keeps its subject and its headers: a service with consumers on two streams (the
/// intake: the job records and the API keys, for its watches) can keep a copy of a key's record
/// in one and deliver it back into the bucket after the admin revoked the key, but the copy
/// carries the compare-and-set header of the admin's write (`Nats-Expected-Last-Subject-
/// Sequence`), so the bucket refuses it. It takes a client listening on the deliver subjects too
/// (here an operator's `nats sub`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_api_key_stays_revoked_when_the_intake_delivers_an_earlier_copy_of_its_record() {
    init_logs();
    let server = NatsServer::start().await.unwrap();
    let buckets = admin_buckets(&server).await;
    let (_, issued) = buckets.create_tenant("acme", "first key").await.unwrap();
    let key_id = issued.record.key_id.clone();
    intake_store(&server).await;
    let ops_client = server.client().await.unwrap();
    let ops = jetstream::new(ops_client.clone());
    let key_subject = format!("$KV.{}.{key_id}", names::API_KEYS_BUCKET);
    let jobs_stream = format!("KV_{}", names::JOBS_BUCKET);
    let api_keys_stream = format!("KV_{}", names::API_KEYS_BUCKET);

    // The copy, while the key is valid: its record delivered into the job records' stream, and
    // the consumer removed.
    let intake = Connection::open(&server, NatsUser::Intake).await;
    let keeping = consumer::push::Config {
        deliver_subject: format!("$KV.{}.kept", names::JOBS_BUCKET),
        filter_subject: key_subject.clone(),
        ack_policy: consumer::AckPolicy::None,
        ..Default::default()
    };
    let kept = intake
        .jetstream
        .create_consumer_on_stream(keeping, api_keys_stream.as_str())
        .await
        .expect("the intake creates consumers of the API keys");
    let listening = ops_client
        .subscribe(format!("$KV.{}.kept", names::JOBS_BUCKET))
        .await
        .unwrap();
    let records = ops.get_stream(&jobs_stream).await.unwrap();
    let copy = wait_for("the copy", PATIENCE, || async {
        records.get_last_raw_message_by_subject(&key_subject).await.ok()
    })
    .await
    .unwrap();
    intake
        .jetstream
        .delete_consumer_from_stream(&kept.cached_info().name, api_keys_stream.as_str())
        .await
        .expect("the intake removes consumers of the API keys");
    drop(listening);
    let copied: common::identity::ApiKeyRecord = serde_json::from_slice(&copy.payload).unwrap();
    assert_eq!(copied, issued.record, "the copy is of the valid key");

    // The admin revokes the key; the intake delivers the copy back into the API keys.
    let revoked = buckets.revoke_key(&key_id).await.unwrap();
    let keys = ops.get_key_value(names::API_KEYS_BUCKET).await.unwrap();
    let revoked_revision = keys.entry(&key_id).await.unwrap().unwrap().revision;
    let restoring = consumer::push::Config {
        deliver_subject: key_subject.clone(),
        deliver_policy: consumer::DeliverPolicy::ByStartSequence {
            start_sequence: copy.sequence,
        },
        ack_policy: consumer::AckPolicy::None,
        ..Default::default()
    };
    let mut restoring = intake
        .jetstream
        .create_consumer_on_stream(restoring, jobs_stream.as_str())
        .await
        .expect("the intake creates consumers of the job records");
    let mut listening = ops_client.subscribe(key_subject.clone()).await.unwrap();
    let delivered = tokio::time::timeout(PATIENCE, listening.next())
        .await
        .expect("the copy is delivered")
        .unwrap();
    assert_eq!(delivered.payload, copy.payload);
    assert_eq!(restoring.info().await.unwrap().num_pending, 0);
    // A write to the keys acknowledged after that: the bucket took whatever reached it before.
    keys.put("later", "{}".into()).await.unwrap();

    let stored: common::identity::ApiKeyRecord =
        serde_json::from_slice(&keys.get(&key_id).await.unwrap().unwrap()).unwrap();
    assert_eq!(stored, revoked, "the key is no longer revoked");
    assert_eq!(keys.entry(&key_id).await.unwrap().unwrap().revision, revoked_revision);
    assert_nothing_else_refused(&server, &[&intake]);
}

/// A known hole (see nats/auth.conf, "Known holes"): the processors' advisories consumer takes
/// every message of its stream, whatever its subject, and a push consumer's delivery to the
/// advisory subject is stored there (the server itself listens on advisory subjects, so the
/// delivery needs no other listener): the notifier, which may not touch jobs, hands the
/// processors a "max deliveries" advisory naming any queued job, which a processor then fails
/// and removes from the queue. Closed once the advisories consumer filters on the advisory
/// subject (a delivery keeps its own subject).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notifier_cannot_hand_the_processors_a_forged_max_deliveries_advisory() {
    init_logs();
    let server = NatsServer::start().await.unwrap();
    admin_provisions(&server, notifier::NATS_RESOURCES).await;
    admin_provisions(&server, processor::NATS_RESOURCES).await;
    let record = intake_accepts_a_job(&server, "alice").await;
    let handles = open_as(&server, NatsUser::Notifier, notifier::NATS_RESOURCES).await;
    let ops = jetstream::new(server.client().await.unwrap());
    let advisory = serde_json::json!({
        "type": "io.nats.jetstream.advisory.v1.max_deliver",
        "stream": names::JOBS_STREAM,
        "consumer": names::PROCESSOR_CONSUMER,
        "stream_seq": 1,
        "deliveries": 1,
    });
    let dead_letters = common::nats::bucket(&handles.jetstream, names::WEBHOOK_DEAD_LETTERS_BUCKET)
        .await
        .unwrap();
    dead_letters
        .put("advisory", serde_json::to_vec(&advisory).unwrap().into())
        .await
        .expect("the notifier writes dead letters");
    let notifier = Connection::open(&server, NatsUser::Notifier).await;
    let delivering = consumer::push::Config {
        deliver_subject: names::max_deliveries_advisory_subject(),
        filter_subject: format!("$KV.{}.advisory", names::WEBHOOK_DEAD_LETTERS_BUCKET),
        ack_policy: consumer::AckPolicy::None,
        ..Default::default()
    };
    let created = notifier
        .jetstream
        .create_consumer_on_stream(delivering, format!("KV_{}", names::WEBHOOK_DEAD_LETTERS_BUCKET))
        .await;
    if let Ok(consumer) = &created {
        wait_for("the delivery", PATIENCE, || async {
            (consumer.clone().info().await.ok()?.num_pending == 0).then_some(())
        })
        .await
        .unwrap();
    }
    // An advisory acknowledged after it (of no job): the stream took whatever reached it before.
    ops.publish(
        names::max_deliveries_advisory_subject(),
        r#"{"stream_seq":0,"deliveries":0}"#.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let mut advisories: consumer::PullConsumer = ops
        .get_consumer_from_stream(names::ADVISORIES_CONSUMER, names::ADVISORIES_STREAM)
        .await
        .unwrap();
    let pending = advisories.info().await.unwrap().num_pending;
    assert_eq!(
        pending, 1,
        "a forged advisory of job {} waits for the processors",
        record.job_id
    );
}

/// A known hole, which subject permissions alone cannot close: the server takes a create on
/// `CONSUMER.CREATE.<stream>` (no consumer name in the subject, as async-nats creates an ordered
/// consumer at first) whose config has the `name` of an existing consumer as an update of that
/// consumer (only a `durable_name` is refused there, 10020). So the processor and the notifier,
/// which follow the events with ordered consumers, can rewrite the webhook consumer (which
/// events become webhooks, how long a delivery may take), past the deny of its name in
/// `nats/auth.conf`. Closed once the services name their ordered consumers on the events
/// (`OrderedConfig::name`) and `auth.conf` denies them `CONSUMER.CREATE.DOWNLOAD_EVENTS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_service_can_change_the_webhook_consumer_through_an_unnamed_consumer_create() {
    init_logs();
    let server = NatsServer::start().await.unwrap();
    admin_provisions(&server, notifier::NATS_RESOURCES).await;
    admin_provisions_webhook_consumers(&server).await;
    let ops = jetstream::new(server.client().await.unwrap());
    let webhook_consumer = || async {
        ops.get_consumer_from_stream::<consumer::pull::Config, _, _>(names::WEBHOOK_CONSUMER, names::EVENTS_STREAM)
            .await
            .unwrap()
            .cached_info()
            .config
            .clone()
    };
    let before = webhook_consumer().await;
    // Its own config delivering every event (progress too), asked for on the subject without a
    // consumer name that ordered consumers use: as the durable consumer, and as an ephemeral one
    // of that name.
    let mut every_event = serde_json::to_value(&before).unwrap();
    every_event["filter_subjects"] = serde_json::json!([names::EVENTS_STREAM_SUBJECTS]);
    every_event["durable_name"] = names::WEBHOOK_CONSUMER.into();
    let mut named = every_event.clone();
    named.as_object_mut().unwrap().remove("durable_name");
    let mut durable = every_event.clone();
    durable.as_object_mut().unwrap().remove("name");
    let mut outcomes = Vec::new();
    for user in [NatsUser::Notifier, NatsUser::Processor] {
        let connection = Connection::open(&server, user).await;
        for config in [&named, &durable, &every_event] {
            let request = serde_json::json!({ "stream_name": names::EVENTS_STREAM, "config": config });
            let asked = connection.client.request(
                format!("$JS.API.CONSUMER.CREATE.{}", names::EVENTS_STREAM),
                serde_json::to_vec(&request).unwrap().into(),
            );
            // Refused by the permissions (no answer), or answered by the server.
            let answer = match tokio::time::timeout(REFUSED_CALL_TIMEOUT, asked).await {
                Ok(Ok(answer)) => {
                    serde_json::from_slice::<serde_json::Value>(&answer.payload).unwrap()["error"].clone()
                }
                _ => "refused".into(),
            };
            let changed = webhook_consumer().await != before;
            outcomes.push(format!(
                "{} with {:?}: error {}; changed by now: {changed}",
                user.name(),
                config
                    .as_object()
                    .unwrap()
                    .keys()
                    .filter(|key| key.contains("name"))
                    .collect::<Vec<_>>(),
                answer
            ));
        }
    }
    assert_eq!(webhook_consumer().await, before, "{outcomes:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_provisions_everything_and_manages_tenants_and_keys_but_writes_no_job_records() {
    init_logs();
    let server = NatsServer::start().await.unwrap();
    // Every service's resources and the webhook consumers, twice (a second provisioning, with
    // the same settings, finds them identical).
    for _ in 0..2 {
        admin_provisions(&server, Resource::ALL).await;
        admin_provisions_webhook_consumers(&server).await;
    }
    let record = intake_accepts_a_job(&server, "alice").await;
    let buckets = admin_buckets(&server).await;
    let mut admin = Connection::open(&server, NatsUser::Admin).await;
    let mut watch = buckets.keys.watch_with_history(">").await.unwrap();
    let (_, issued) = buckets.create_tenant("acme", "first").await.unwrap();
    let watched = tokio::time::timeout(PATIENCE, watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(watched.key, issued.record.key_id);
    assert_eq!(buckets.list_keys(Some("acme")).await.unwrap().len(), 1);
    assert_eq!(buckets.list_tenants().await.unwrap().len(), 1);
    buckets.revoke_key(&issued.record.key_id).await.unwrap();
    buckets
        .rotate_webhook_secret("acme", chrono::Duration::hours(1))
        .await
        .unwrap();

    let subject = format!("$KV.{}.{}", names::JOBS_BUCKET, record.job_id);
    let written = admin.publish_acked(&subject).await;
    // A guard against mistakes, not a boundary: the admin may change streams, so it is an
    // operator's user (nats/auth.conf, "Provisioning").
    assert!(written.is_err(), "the admin wrote a job record");
    admin.expect_refused_publish(&subject).await;
    let ops = jetstream::new(server.client().await.unwrap());
    let ops_store = JobStore::new(ops.clone(), ops.get_key_value(names::JOBS_BUCKET).await.unwrap());
    assert_eq!(ops_store.load(record.job_id).await.unwrap().unwrap().record, record);
    assert_nothing_else_refused(&server, &[&admin]);
}

/// Fast settings of the services, as the stack uses them, behind a gateway that names the
/// caller, opening what the admin provisioned (`NATS_PROVISION=false`), and connecting to NATS
/// as `user`.
fn service_env(server: &NatsServer, s3: &S3Server, user: NatsUser) -> Env {
    let mut env = Env::from_pairs(system_tests::stack::fast_defaults());
    let extra = [
        ("NATS_PROVISION", "false"),
        ("AUTH_MODE", "gateway"),
        ("STREAM_TOKEN_SECRET", "permissions-test-stream-token-secret-0123456789"),
        ("WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8"),
        ("WEBHOOK_INITIAL_DELAY_MS", "200"),
        ("WEBHOOK_TIMEOUT_MS", "2000"),
    ];
    for (key, value) in extra {
        env = env.with(key, value);
    }
    for (key, value) in s3.env().into_iter().chain(server.env_for(user)) {
        env = env.with(key, value);
    }
    env
}

/// A processor that opens what the admin provisioned refuses to start while the job consumer
/// is the previous version's (filtered on v1 messages only): the jobs its intakes queue would
/// wait unseen. It names the command that mends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_refuses_to_start_on_a_job_consumer_that_misses_this_versions_jobs() {
    init_logs();
    let (server, s3) = tokio::try_join!(NatsServer::start(), S3Server::start()).unwrap();
    admin_provisions(&server, processor::NATS_RESOURCES).await;
    let admin = jetstream::new(connect_like_a_service(&server, NatsUser::Admin).await);
    let mut previous = common::nats::processor_consumer_config(&Topology::default());
    previous.filter_subjects = Vec::new();
    previous.filter_subject = names::JOB_SUBMITTED_SUBJECT.into();
    admin
        .create_consumer_on_stream(previous, names::JOBS_STREAM)
        .await
        .expect("the admin puts back the previous consumer");
    let settings = processor::Settings::from_env(&service_env(&server, &s3, NatsUser::Processor)).unwrap();
    let refused = tokio::time::timeout(PATIENCE, processor::run(settings, CancellationToken::new()))
        .await
        .expect("the processor stops at once");
    let error = format!("{:#}", refused.expect_err("the processor refuses to start"));
    assert!(
        error.contains("downloads.jobs.submitted.*") && error.contains("run `processor provision`"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_end_to_end_with_every_service_as_its_own_user_and_nothing_refused() {
    init_logs();
    let (server, s3) = tokio::try_join!(NatsServer::start(), S3Server::start()).unwrap();
    // The deployment's provisioning steps, run by the admin with the services' settings:
    // `intake provision`, `processor provision`, `notifier provision`, and `download-admin`
    // making `acme` a tenant with a webhook secret.
    let provisioning = service_env(&server, &s3, NatsUser::Admin);
    intake::provision(&intake::Settings::from_env(&provisioning).unwrap())
        .await
        .expect("the admin provisions the intake");
    processor::provision(&processor::Settings::from_env(&provisioning).unwrap())
        .await
        .expect("the admin provisions the processors");
    notifier::provision(&notifier::Settings::from_env(&provisioning).unwrap())
        .await
        .expect("the admin provisions the notifiers");
    let buckets = admin_buckets(&server).await;
    let (tenant, _key) = buckets.create_tenant("acme", "permissions test").await.unwrap();

    // The services, each as its own user, opening what is there.
    let stop = CancellationToken::new();
    let presigner_settings = presigner::Settings::from_env(&service_env(&server, &s3, NatsUser::Presigner)).unwrap();
    let presigner = tokio::spawn(presigner::run(presigner_settings, stop.clone()));
    let processor_settings = processor::Settings::from_env(&service_env(&server, &s3, NatsUser::Processor)).unwrap();
    let processor = tokio::spawn(processor::run(processor_settings, stop.clone()));
    let intake_settings = intake::Settings::from_env(&service_env(&server, &s3, NatsUser::Intake)).unwrap();
    let notifier_settings = notifier::Settings::from_env(&service_env(&server, &s3, NatsUser::Notifier)).unwrap();
    let (intake, notifier) = tokio::try_join!(
        intake::Application::build(intake_settings),
        notifier::Application::build(notifier_settings)
    )
    .unwrap();
    let (intake_address, notifier_address) = (intake.local_addr(), notifier.local_addr());
    let intake = tokio::spawn(intake.run_until_stopped(stop.clone()));
    let notifier = tokio::spawn(notifier.run_until_stopped(stop.clone()));

    let ops = server.client().await.unwrap();
    let ops_jetstream = jetstream::new(ops.clone());
    wait_for("the processor to pull jobs", PATIENCE, || async {
        let mut consumer: consumer::PullConsumer = ops_jetstream
            .get_consumer_from_stream(names::PROCESSOR_CONSUMER, names::JOBS_STREAM)
            .await
            .ok()?;
        (consumer.info().await.ok()?.num_waiting > 0).then_some(())
    })
    .await
    .unwrap();
    wait_for("the presigner to answer discovery", PATIENCE, || async {
        let subject = format!("$SRV.PING.{}", names::PRESIGNER_SERVICE);
        tokio::time::timeout(REFUSED_CALL_TIMEOUT, ops.request(subject, "".into()))
            .await
            .ok()?
            .ok()
    })
    .await
    .unwrap();

    let storage = common::storage::Storage::new(&s3.settings()).unwrap();
    let content = system_tests::sample_bytes(94_000, 4096);
    storage
        .client()
        .put_object_content(storage.bucket(), names::source_key(94_000).as_str(), content.clone())
        .unwrap()
        .build()
        .send()
        .await
        .unwrap();
    let mut receiver = Receiver::start(0, &[200]).await.unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // The intake's health check reads the account and the job stream.
    let health = http
        .get(format!("http://{intake_address}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "{:?}", health.text().await);
    let accepted = http
        .post(format!("http://{intake_address}/v1/download/initiate"))
        // The gateway in front of the intake names the caller (`AUTH_MODE=gateway`).
        .header("X-User-Id", "acme")
        .json(&serde_json::json!({ "file_ids": [94_000], "callbackUrl": receiver.url() }))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202, "{:?}", accepted.text().await);
    let accepted: serde_json::Value = accepted.json().await.unwrap();
    let job_id = accepted["jobId"].as_str().unwrap().to_string();

    // The notifier streams the job's events to its owner until it completes.
    let stream_url = format!("http://{notifier_address}{}", accepted["streamUrl"].as_str().unwrap());
    let response = http.get(&stream_url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut events = SseReader::new(response);
    let mut heartbeats = 0;
    loop {
        let (_, _, data) = events
            .next_event(PATIENCE, &mut heartbeats)
            .await
            .unwrap()
            .expect("the stream lasts until the job ends");
        if data["status"] == "completed" {
            break;
        }
    }

    // A client that reconnects gets what it missed (the notifier reads the job's events).
    let resumed = http.get(&stream_url).header("Last-Event-ID", "1").send().await.unwrap();
    assert_eq!(resumed.status(), 200);
    let mut missed = SseReader::new(resumed);
    let (_, _, first_missed) = missed
        .next_event(PATIENCE, &mut heartbeats)
        .await
        .unwrap()
        .expect("missed events are sent");
    assert!(first_missed["seq"].as_u64().unwrap() > 1, "{first_missed}");

    // The intake answers with a freshly presigned URL of the result.
    let status: serde_json::Value = http
        .get(format!("http://{intake_address}/v1/download/status/{job_id}"))
        .header("X-User-Id", "acme")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "completed", "{status}");
    let download_url = status["downloadUrl"].as_str().unwrap();
    assert_eq!(
        reqwest::get(download_url)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec(),
        content
    );

    // The webhook is signed with the tenant's secret, which the notifier read from its bucket.
    let delivery = tokio::time::timeout(PATIENCE, receiver.deliveries.recv())
        .await
        .unwrap()
        .unwrap();
    let secrets: Vec<&str> = tenant
        .webhook_secrets
        .iter()
        .map(|secret| secret.secret.as_str())
        .collect();
    delivery.verify(&secrets).unwrap();
    assert_eq!(delivery.json()["jobId"], job_id.as_str());

    stop.cancel();
    for (name, service) in [
        ("presigner", presigner),
        ("processor", processor),
        ("intake", intake),
        ("notifier", notifier),
    ] {
        service
            .await
            .unwrap()
            .unwrap_or_else(|error| panic!("the {name} stops cleanly: {error:?}"));
    }
    let refused = server.permission_violations();
    assert!(refused.is_empty(), "the server refused:\n{}", refused.join("\n"));
}
