//! ListJobs (order, filters, pages) and GetQueueStats.

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use jobq_tests::pb::{GetQueueStatsRequest, Job, JobSpec, JobState, ListJobsRequest};
use jobq_tests::{LeasedJobExt, TestServer, millis_opt, spec};

fn ids(jobs: &[Job]) -> Vec<String> {
    jobs.iter().map(|job| job.id.clone()).collect()
}

/// `jobs`' ids, newest first: descending by id.
fn newest_first(jobs: &[&Job]) -> Vec<String> {
    let mut ids: Vec<_> = jobs.iter().map(|job| job.id.clone()).collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_jobs_filters_and_pages_newest_first() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    let mut jobs = Vec::new();
    for n in 0..4 {
        jobs.push(
            jobq.enqueue(JobSpec {
                payload: Some(jobq_tests::json(serde_json::json!({ "n": n }))),
                ..spec("alpha")
            })
            .await?,
        );
    }
    for _ in 0..3 {
        jobs.push(
            jobq.enqueue(JobSpec {
                queue: "media".into(),
                ..spec("beta")
            })
            .await?,
        );
    }
    let leased = jobq.lease_one("worker-a").await?;
    jobq.complete(&leased).await?;
    let succeeded_id = leased.id().to_owned();

    // Pages of 3 over 7 jobs: 3 + 3 + 1, the last with no next token.
    let mut collected = Vec::new();
    let mut sizes = Vec::new();
    let mut request = ListJobsRequest {
        page_size: 3,
        ..Default::default()
    };
    for _ in 0..10 {
        let page = jobq.list(request.clone()).await?;
        sizes.push(page.jobs.len());
        collected.extend(page.jobs);
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    assert_eq!(
        sizes,
        vec![3, 3, 1],
        "page sizes, the last page with an empty next_page_token"
    );
    assert_eq!(
        ids(&collected),
        newest_first(&jobs.iter().collect::<Vec<_>>()),
        "newest first by id, no gaps or repeats"
    );
    ensure!(
        collected.iter().all(|job| job.attempts.is_empty()),
        "ListJobs leaves attempts out"
    );

    let betas = jobq
        .list_all(ListJobsRequest {
            types: vec!["beta".into()],
            ..Default::default()
        })
        .await?;
    let expected: Vec<_> = jobs.iter().filter(|job| job.r#type == "beta").collect();
    assert_eq!(ids(&betas), newest_first(&expected), "types filter");

    let media = jobq
        .list_all(ListJobsRequest {
            queues: vec!["media".into()],
            ..Default::default()
        })
        .await?;
    assert_eq!(ids(&media), newest_first(&expected), "queues filter");

    let none = jobq
        .list_all(ListJobsRequest {
            types: vec!["alpha".into()],
            queues: vec!["media".into()],
            ..Default::default()
        })
        .await?;
    assert!(none.is_empty(), "filters of different fields are ANDed");

    let done = jobq
        .list_all(ListJobsRequest {
            states: vec![JobState::Succeeded as i32],
            ..Default::default()
        })
        .await?;
    assert_eq!(ids(&done), vec![succeeded_id.clone()], "states filter");
    let either = jobq
        .list_all(ListJobsRequest {
            states: vec![JobState::Succeeded as i32, JobState::Queued as i32],
            ..Default::default()
        })
        .await?;
    assert_eq!(either.len(), 7, "values within one filter are ORed");

    // Running jobs are listed from their own index, the other states from
    // the state index: each state alone and mixed, in pages, newest first.
    let mut running = Vec::new();
    for _ in 0..3 {
        running.push(jobq.lease_one("worker-b").await?.id().to_owned());
    }
    running.sort_unstable_by(|a, b| b.cmp(a));
    let mut request = ListJobsRequest {
        states: vec![JobState::Running as i32],
        page_size: 2,
        ..Default::default()
    };
    let mut listed = Vec::new();
    for _ in 0..10 {
        let page = jobq.list(request.clone()).await?;
        listed.extend(ids(&page.jobs));
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    assert_eq!(listed, running, "running jobs, newest first, in pages");
    let queued = jobq
        .list_all(ListJobsRequest {
            states: vec![JobState::Queued as i32],
            ..Default::default()
        })
        .await?;
    let expected: Vec<_> = jobs
        .iter()
        .filter(|job| job.id != succeeded_id && !running.contains(&job.id))
        .collect();
    assert_eq!(ids(&queued), newest_first(&expected), "queued jobs");
    let running_or_done = jobq
        .list_all(ListJobsRequest {
            states: vec![JobState::Running as i32, JobState::Succeeded as i32],
            ..Default::default()
        })
        .await?;
    let mut expected = running.clone();
    expected.push(succeeded_id.clone());
    expected.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(ids(&running_or_done), expected, "running or succeeded");

    // Created range: a cut at the 4th job's creation time, compared with the
    // server's own created_at values (several jobs may share a millisecond).
    let cut = jobs[3].created_at.context("created_at")?;
    let cut_ms = millis_opt(&jobs[3].created_at, "created_at")?;
    let mut at_or_after = Vec::new();
    let mut before = Vec::new();
    for job in &jobs {
        if millis_opt(&job.created_at, "created_at")? >= cut_ms {
            at_or_after.push(job)
        } else {
            before.push(job)
        }
    }
    let after = jobq
        .list_all(ListJobsRequest {
            created_after: Some(cut),
            ..Default::default()
        })
        .await?;
    assert_eq!(
        ids(&after),
        newest_first(&at_or_after),
        "created_after is inclusive"
    );
    let earlier = jobq
        .list_all(ListJobsRequest {
            created_before: Some(cut),
            ..Default::default()
        })
        .await?;
    assert_eq!(
        ids(&earlier),
        newest_first(&before),
        "created_before is exclusive"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_stats_count_jobs_by_queue_and_state() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    for _ in 0..4 {
        jobq.enqueue(spec("a")).await?;
    }
    for _ in 0..2 {
        jobq.enqueue(JobSpec {
            queue: "media".into(),
            ..spec("b")
        })
        .await?;
    }
    let leased = jobq.lease_one("worker-a").await?;
    jobq.complete(&leased).await?;
    let dead = jobq.lease_one("worker-a").await?;
    jobq.fail(&dead, "bad", false).await?;
    // Queued, running and settled jobs are counted from three indexes.
    jobq.lease_one("worker-a").await?;

    let stats = jobq.stats().await?;
    let by_queue: BTreeMap<_, BTreeMap<_, _>> = stats
        .queues
        .iter()
        .map(|queue| {
            (
                queue.queue.clone(),
                queue
                    .counts
                    .iter()
                    .map(|c| (c.state().as_str_name(), c.count))
                    .collect(),
            )
        })
        .collect();
    let expected: BTreeMap<_, BTreeMap<_, _>> = BTreeMap::from([
        (
            "default".to_owned(),
            BTreeMap::from([
                ("JOB_STATE_QUEUED", 1),
                ("JOB_STATE_RUNNING", 1),
                ("JOB_STATE_SUCCEEDED", 1),
                ("JOB_STATE_DEAD", 1),
            ]),
        ),
        (
            "media".to_owned(),
            BTreeMap::from([("JOB_STATE_QUEUED", 2)]),
        ),
    ]);
    assert_eq!(
        by_queue, expected,
        "counts by queue and state, empty states left out"
    );
    let names: Vec<_> = stats.queues.iter().map(|q| q.queue.as_str()).collect();
    assert_eq!(names, vec!["default", "media"], "queues sorted by name");
    let totals: BTreeMap<_, _> = stats
        .totals
        .iter()
        .map(|c| (c.state().as_str_name(), c.count))
        .collect();
    assert_eq!(
        totals,
        BTreeMap::from([
            ("JOB_STATE_QUEUED", 3),
            ("JOB_STATE_RUNNING", 1),
            ("JOB_STATE_SUCCEEDED", 1),
            ("JOB_STATE_DEAD", 1)
        ]),
        "totals over all queues"
    );
    assert!(stats.as_of.is_some(), "as_of is set");

    let only_media = jobq
        .queue()
        .get_queue_stats(GetQueueStatsRequest {
            queues: vec!["media".into()],
        })
        .await
        .context("GetQueueStats(media)")?
        .into_inner();
    let names: Vec<_> = only_media.queues.iter().map(|q| q.queue.as_str()).collect();
    assert_eq!(names, vec!["media"], "the queues filter narrows the stats");
    let media_counts: Vec<_> = only_media
        .queues
        .iter()
        .flat_map(|queue| &queue.counts)
        .map(|c| (c.state().as_str_name(), c.count))
        .collect();
    assert_eq!(
        media_counts,
        vec![("JOB_STATE_QUEUED", 2)],
        "only media's jobs counted"
    );
    Ok(())
}
