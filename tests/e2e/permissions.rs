//! Every service connects to NATS as its own user with the subject permissions of
//! `nats/auth.conf`: each can do its job and is refused what is not its job, and a whole job runs
//! with every service as its own user without the server refusing anything.
//!
//! A refused publish or subscription is dropped by the server, which tells the client
//! asynchronously (`Permissions Violation for Publish to "..."`): a refused request or
//! JetStream call gets no answer. So each refusal is asserted twice: the call fails (no answer
//! within a short timeout), and the server's error for exactly that subject reaches the client.
//! The outcome is then checked as an operator sees it.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use async_nats::service::ServiceExt;
use common::config::{Env, NatsSettings};
use common::identity::admin::IdentityBuckets;
use common::messages::JobMessage;
use common::nats::{Resource, Topology};
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
}

impl Connection {
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
        }
    }

    /// Waits for the server to report that it refused `action` ("Publish to" or
    /// "Subscription to") on exactly `subject`.
    async fn expect_refused(&mut self, action: &str, subject: &str) {
        let expected = format!("permissions violation for {action} \"{subject}\"").to_lowercase();
        let found = tokio::time::timeout(PATIENCE, async {
            while let Some(error) = self.server_errors.recv().await {
                if error.to_lowercase().contains(&expected) {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(found, Ok(true), "the server did not report: {expected}");
    }

    async fn expect_refused_publish(&mut self, subject: &str) {
        self.expect_refused("publish to", subject).await;
    }

    async fn expect_refused_subscription(&mut self, subject: &str) {
        self.expect_refused("subscription to", subject).await;
    }
}

/// Connects exactly as the services do (`common::nats::connect` with `NATS_URL`, `NATS_USER`,
/// `NATS_PASSWORD`) and provisions `resources` as the owning service does.
async fn provision_as(
    server: &NatsServer,
    user: NatsUser,
    topology: &Topology,
    resources: &[Resource],
) -> common::nats::JetStreamHandles {
    let settings = NatsSettings::from_env(&Env::from_pairs(server.env_for(user))).unwrap();
    let client = common::nats::connect(&settings, &format!("download-{}", user.name()))
        .await
        .unwrap();
    common::nats::provision(&client, topology, resources)
        .await
        .unwrap_or_else(|error| panic!("{} provisions {resources:?}: {error:?}", user.name()))
}

/// The identity buckets as `download-admin` provisions and opens them, connected as the admin.
async fn admin_buckets(server: &NatsServer) -> IdentityBuckets {
    let settings = NatsSettings::from_env(&Env::from_pairs(server.env_for(NatsUser::Admin))).unwrap();
    let client = common::nats::connect(&settings, "download-admin").await.unwrap();
    IdentityBuckets::provision(&client, &Topology::streams(&settings))
        .await
        .expect("the admin provisions the identity buckets")
}

const INTAKE_RESOURCES: [Resource; 3] = [Resource::JobsStream, Resource::EventsStream, Resource::ApiKeysBucket];
const PROCESSOR_RESOURCES: [Resource; 5] = [
    Resource::JobsStream,
    Resource::EventsStream,
    Resource::AdvisoriesStream,
    Resource::ProcessorConsumer,
    Resource::AdvisoriesConsumer,
];
const NOTIFIER_RESOURCES: [Resource; 6] = [
    Resource::EventsStream,
    Resource::WebhookReplaysStream,
    Resource::DeadLettersBucket,
    Resource::StreamLeasesBucket,
    Resource::ApiKeysBucket,
    Resource::TenantsBucket,
];

/// The intake's job store, connected and provisioned as the intake.
async fn intake_store(server: &NatsServer) -> JobStore {
    let handles = provision_as(server, NatsUser::Intake, &Topology::default(), &INTAKE_RESOURCES).await;
    JobStore::new(handles.jetstream, handles.jobs)
}

/// The intake queues a job and stores its record, as it does for `POST /v1/download/initiate`.
async fn intake_accepts_a_job(server: &NatsServer, owner: &str) -> JobRecord {
    accept_job(&intake_store(server).await, owner).await
}

async fn accept_job(store: &JobStore, owner: &str) -> JobRecord {
    let job_id = JobId::new();
    let record = JobRecord::queued(job_id, owner.into(), vec![70_000], None, 1, None);
    let message = JobMessage::SubmittedV1 {
        job_id,
        user_id: owner.into(),
        file_ids: vec![70_000],
    };
    store.submit(&message).await.expect("the intake queues jobs");
    store.create(&record).await.expect("the intake stores job records");
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
    provision_as(&server, NatsUser::Processor, &Topology::default(), &PROCESSOR_RESOURCES).await;
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

    // Nor can it read another service's replies, or listen to the queue's subjects.
    let _sniffer = intake.client.subscribe("_INBOX_processor.>").await.unwrap();
    intake.expect_refused_subscription("_INBOX_processor.>").await;
    let _listener = intake.client.subscribe("downloads.jobs.>").await.unwrap();
    intake.expect_refused_subscription("downloads.jobs.>").await;

    // The job still waits for a processor, untouched, and its cancellation is in the events.
    let ops = jetstream::new(server.client().await.unwrap());
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_processor_consumes_jobs_but_cannot_write_api_keys_or_tenants() {
    init_logs();
    let server = NatsServer::start().await.unwrap();
    // The admin creates the identity buckets and a tenant.
    let topology = Topology::default();
    let buckets = admin_buckets(&server).await;
    let (tenant, _key) = buckets.create_tenant("acme", "first key").await.unwrap();
    let handles = provision_as(&server, NatsUser::Processor, &topology, &PROCESSOR_RESOURCES).await;
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
        let written = async {
            processor
                .jetstream
                .publish(subject.clone(), "{}".into())
                .await?
                .await
                .map_err(async_nats::Error::from)
        }
        .await;
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

    let queued = async {
        presigner
            .jetstream
            .publish(names::JOB_SUBMITTED_SUBJECT, "{}".into())
            .await?
            .await
            .map_err(async_nats::Error::from)
    }
    .await;
    assert!(queued.is_err(), "the presigner queued a job");
    presigner.expect_refused_publish(names::JOB_SUBMITTED_SUBJECT).await;

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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notifier_reads_job_records_and_keeps_its_own_buckets_but_cannot_write_job_records() {
    init_logs();
    let server = NatsServer::start().await.unwrap();
    let intake = intake_store(&server).await;
    let accepted = accept_job(&intake, "alice").await;
    let common::store::Change::Written(record) = intake
        .update(accepted.job_id, |record| {
            record.cancel();
            true
        })
        .await
        .unwrap()
    else {
        panic!("the cancellation is written");
    };
    let handles = provision_as(&server, NatsUser::Notifier, &Topology::default(), &NOTIFIER_RESOURCES).await;

    // It reads the record, the job's events, and writes leases and dead letters.
    let store = JobStore::new(handles.jetstream.clone(), handles.jobs.clone());
    let found = store
        .load(record.job_id)
        .await
        .unwrap()
        .expect("the notifier reads job records");
    assert_eq!(found.record, record);
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
    for bucket in [names::STREAM_LEASES_BUCKET, names::WEBHOOK_DEAD_LETTERS_BUCKET] {
        let kv = common::nats::bucket(&handles.jetstream, bucket).await.unwrap();
        kv.put("user.616c696365", "{}".into())
            .await
            .unwrap_or_else(|error| panic!("the notifier writes {bucket}: {error}"));
    }

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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_manages_tenants_and_keys_but_cannot_touch_jobs() {
    init_logs();
    let server = NatsServer::start().await.unwrap();
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
    let written = async {
        admin
            .jetstream
            .publish(subject.clone(), "{}".into())
            .await?
            .await
            .map_err(async_nats::Error::from)
    }
    .await;
    assert!(written.is_err(), "the admin wrote a job record");
    admin.expect_refused_publish(&subject).await;
}

/// Fast settings of the services, as the stack uses them, behind a gateway that names the
/// caller, and connecting to NATS as `user`.
fn service_env(server: &NatsServer, s3: &S3Server, user: NatsUser) -> Env {
    let mut env = Env::from_pairs(system_tests::stack::fast_defaults());
    let extra = [
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_end_to_end_with_every_service_as_its_own_user_and_nothing_refused() {
    init_logs();
    let (server, s3) = tokio::try_join!(NatsServer::start(), S3Server::start()).unwrap();
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

    // The admin makes `acme` a tenant with a webhook secret once the services made the buckets;
    // the gateway in front of the intake names the caller (`AUTH_MODE=gateway`).
    let buckets = admin_buckets(&server).await;
    let (tenant, _key) = buckets.create_tenant("acme", "permissions test").await.unwrap();

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
