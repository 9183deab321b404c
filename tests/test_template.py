"""template.yaml is the deployed shape: its handlers, variables and policies match the code."""

import importlib

import yaml
from cfnlint.decode.cfn_yaml import loads as cfn_loads

from ciphervec.infra.settings import ENV
from tests.conftest import ROOT


def template():
    return cfn_loads((ROOT / "template.yaml").read_text())


def functions(t):
    return {k: v for k, v in t["Resources"].items() if v["Type"] == "AWS::Serverless::Function"}


def test_every_handler_is_importable():
    fns = functions(template())
    assert set(fns) == {"ApiFunction", "TrainFunction", "IngestFunction"}
    for fn in fns.values():
        module, _, attr = fn["Properties"]["Handler"].rpartition(".")
        assert callable(getattr(importlib.import_module(module), attr))


def test_environment_names_are_settings():
    t = template()
    names = set(t["Globals"]["Function"]["Environment"]["Variables"])
    for fn in functions(t).values():
        names |= set(fn["Properties"].get("Environment", {}).get("Variables", {}))
    ours = {n for n in names if n.startswith("CIPHERVEC_")}
    assert ours <= set(ENV.values())
    assert {"CIPHERVEC_STORE", "CIPHERVEC_KEYS", "CIPHERVEC_TRAIN_FUNCTION"} <= ours


def test_api_routes_everything_to_api_function():
    t = template()
    events = t["Resources"]["ApiFunction"]["Properties"]["Events"]
    assert any(e["Type"] == "HttpApi" and e["Properties"]["Path"] == "/{proxy+}" for e in events.values())


def test_bucket_is_private_encrypted_and_tls_only():
    r = template()["Resources"]
    bucket = r["DataBucket"]["Properties"]
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert bucket["VersioningConfiguration"]["Status"] == "Enabled"
    assert "BucketEncryption" in bucket
    statement = r["DataBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
    assert statement["Effect"] == "Deny" and statement["Condition"]["Bool"]["aws:SecureTransport"] == "false"


def test_least_privilege_policies_have_no_wildcard_actions():
    for name, fn in functions(template()).items():
        for policy in fn["Properties"]["Policies"]:
            for statement in policy["Statement"]:
                actions = (
                    statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                )
                assert all("*" not in a for a in actions), name


def test_events_are_valid_json_api_gateway_v2():
    for path in (ROOT / "events").glob("*.json"):
        event = yaml.safe_load(path.read_text())
        if path.name.startswith("ingest_"):
            continue
        assert event["version"] == "2.0" and event["rawPath"].startswith("/v1/")


def test_ingest_event_is_an_sqs_wrapped_s3_notification_the_handler_parses(monkeypatch):
    import json

    from ciphervec.handlers import ingest

    event = json.loads((ROOT / "events" / "ingest_s3_put.json").read_text())
    record = event["Records"][0]
    assert record["eventSource"] == "aws:sqs"
    s3 = json.loads(record["body"])["Records"][0]
    assert s3["eventName"].startswith("ObjectCreated") and s3["s3"]["object"]["key"].count("/") == 2
    seen = []
    monkeypatch.setattr(ingest, "_dropped_file", lambda c, rec, run: seen.append(rec["s3"]["object"]["key"]))
    monkeypatch.setattr(ingest, "container", lambda: None)
    assert ingest.lambda_handler(event, None) == {"batchItemFailures": []}
    assert seen == ["default/products/part-0000.parquet"]


def test_loads_are_wired_queue_dlq_alarm_and_notifications():
    from ciphervec.infra.sources import FORMATS

    r = template()["Resources"]
    fn = r["IngestFunction"]["Properties"]
    assert fn["Handler"] == "ciphervec.handlers.ingest.lambda_handler" and fn["Timeout"] == 900
    sqs = fn["Events"]["Loads"]
    assert sqs["Type"] == "SQS" and sqs["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    queue = r["LoadQueue"]["Properties"]
    assert queue["VisibilityTimeout"] >= 6 * fn["Timeout"]
    assert queue["RedrivePolicy"]["maxReceiveCount"] >= 2
    alarm = r["LoadDeadLetterAlarm"]["Properties"]
    assert alarm["MetricName"] == "ApproximateNumberOfMessagesVisible" and alarm["Threshold"] == 0
    suffixes = {
        q["Filter"]["S3Key"]["Rules"][0]["Value"]
        for q in r["LoadBucket"]["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    }
    assert suffixes == set(FORMATS)
    assert r["IngestFunction"]["Metadata"]["BuildMethod"] == "makefile"


def test_failed_trainings_are_retried_then_dead_lettered_with_an_alarm():
    t = template()
    config = t["Resources"]["TrainFunction"]["Properties"]["EventInvokeConfig"]
    assert config["MaximumRetryAttempts"] == 2
    target = config["DestinationConfig"]["OnFailure"]
    assert target["Type"] == "SQS" and target["Destination"] == {
        "Fn::GetAtt": ["TrainDeadLetterQueue", "Arn"]
    }
    alarm = t["Resources"]["TrainDeadLetterAlarm"]["Properties"]
    assert alarm["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["TrainDeadLetterQueue", "QueueName"]}


def test_every_function_is_built_by_the_makefile_with_its_bytecode():
    """`sam build` runs build-<Function> for each: the package and its unchecked-hash bytecode
    (package_check.py verifies the result after `make sam-build`)."""
    makefile = (ROOT / "Makefile").read_text()
    recipes = {}
    for block in makefile.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("build-") and ":" in line:
                for target in line.split(":")[0].split():
                    recipes[target] = block
    assert "--invalidation-mode unchecked-hash" in makefile
    for name, fn in functions(template()).items():
        assert fn["Metadata"]["BuildMethod"] == "makefile", name
        assert "$(call lambda_bytecode)" in recipes[f"build-{name}"], name


def test_packages_keep_the_models_of_every_aws_service_the_code_calls():
    """The build drops botocore's models of services the code never calls (BOTOCORE_KEEP):
    every ``aws.client("…")`` / ``aws.resource("…")`` in the code must be kept."""
    import re

    kept = re.search(r"^BOTOCORE_KEEP = (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    called = set()
    for folder in ("engine", "handlers", "infra"):
        for path in (ROOT / folder).rglob("*.py"):
            called |= set(re.findall(r"aws\.(?:client|resource)\(\"([a-z0-9-]+)\"", path.read_text()))
    assert called >= {"s3", "dynamodb", "kms", "lambda", "sqs"}  # the scan finds the calls
    assert called <= set(kept), called - set(kept)
