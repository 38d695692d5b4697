"""Per region, an SNS topic, a CloudWatch alarm on each link metric the nodes publish, and a
node-down and a takeover alarm per pair.

A link alarm treats missing data as not breaching: before the nodes run, or while a region has
no link, there is nothing wrong with the links. A node-down alarm watches the heartbeat each
node sends every exporter round (``NodeUp``) and treats missing data as breaching: a node that
stopped sending is down, or cannot reach CloudWatch, which the NOC wants to know either way.
A pair-degraded alarm fires when an agent reports its peer dead for two minutes, or stops
reporting (``overlay.ha.PEER_UP_METRIC``): a dead standby takes no call down, only the pair's
redundancy, and nothing else would show it (the node-down heartbeat is the pair's node's, which
either member sends). A takeover alarm fires for the minute in which a pair's HA agent reported
a takeover (``overlay.ha.TAKEOVERS_METRIC``): the calls anchored on the old active ended, and
its machine wants a look.

Topics and alarms are found by their names (``<fleet>-<region>-alarms``, ``<fleet>-<region>-``
and the metric, ``<fleet>-<region>-NodeDown-<AZ>``), not by tags: CloudWatch and SNS have no
tag filter on their list calls.
"""

from __future__ import annotations

import functools
from typing import Any

from deploy._walk import Walk
from deploy.fleet import RegionSpec
from overlay.ha import PEER_UP_METRIC, TAKEOVERS_METRIC, TAKEOVERS_NAMESPACE

ALARM_NAMESPACE = TAKEOVERS_NAMESPACE  # the nodes' metrics and the agents' takeovers
#: Link metrics the nodes publish (per Fleet and Region), and the fleet's threshold for each.
ALARM_METRICS = {"LinkLossPct": "loss_pct", "LinkRttMs": "rtt_ms", "LinkRetransPct": "retrans_pct"}


#: The node heartbeat the node-down alarms watch (``overlay.shell.telemetry``).
NODE_UP = "NodeUp"
#: A node is down after this many exporter rounds (60 s each, the [cloudwatch] default)
#: without its heartbeat.
NODE_DOWN_PERIODS = 2


def converge(walk: Walk, spec: RegionSpec) -> None:
    region = spec.name
    name = walk.name(f"{region}-alarms")
    sns = walk.client("sns", region)
    topic = walk.find_or_create(
        "sns-topic",
        region,
        name,
        lambda: next(iter(_topics(sns, name)), None),
        lambda: sns.create_topic(Name=name, Tags=[walk.fleet_tag()])["TopicArn"],
    )
    cloudwatch = walk.client("cloudwatch", region)
    prefix = walk.name(f"{region}-")
    existing = set(_alarms(cloudwatch, prefix))
    fleet = [{"Name": "Fleet", "Value": walk.fleet.name}, {"Name": "Region", "Value": region}]
    wanted = {}
    for metric, threshold_field in ALARM_METRICS.items():
        threshold = float(getattr(walk.fleet.alarms, threshold_field))
        wanted[f"{prefix}{metric}"] = (
            f"{metric} > {threshold:g}",
            {
                "AlarmDescription": f"overlay {walk.fleet.name}: {metric} on a link from {region}",
                "MetricName": metric,
                "Dimensions": fleet,
                "Statistic": "Maximum",
                "EvaluationPeriods": 3,
                "DatapointsToAlarm": 2,
                "Threshold": threshold,
                "ComparisonOperator": "GreaterThanThreshold",
                "TreatMissingData": "notBreaching",
            },
        )
    for az in spec.azs:
        for alarm, (detail, rule) in _pair_alarms(walk.fleet.name, az.name).items():
            wanted[f"{prefix}{alarm}-{az.name}"] = (
                detail,
                {**rule, "Dimensions": [*fleet, {"Name": "Node", "Value": az.name}]},
            )
    for alarm, (detail, rule) in wanted.items():
        if alarm in existing:
            continue
        walk.act(
            "create",
            "alarm",
            region,
            alarm,
            functools.partial(
                cloudwatch.put_metric_alarm,
                AlarmName=alarm,
                Namespace=ALARM_NAMESPACE,
                Period=60,
                AlarmActions=[topic],
                OKActions=[topic],
                Tags=[walk.fleet_tag()],
                **rule,
            ),
            detail,
        )


def _pair_alarms(fleet: str, pair: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """A pair's alarms by name: what each says, and its rule (the dimensions aside)."""
    lost = {  # a heartbeat missing for NODE_DOWN_PERIODS minutes, or reporting a loss
        "EvaluationPeriods": NODE_DOWN_PERIODS,
        "DatapointsToAlarm": NODE_DOWN_PERIODS,
        "Threshold": 1.0,
        "ComparisonOperator": "LessThanThreshold",
        "TreatMissingData": "breaching",
    }
    return {
        "NodeDown": (
            f"no heartbeat for {NODE_DOWN_PERIODS} minutes",
            {
                "AlarmDescription": f"overlay {fleet}: pair {pair}'s node is down",
                "MetricName": NODE_UP,
                "Statistic": "SampleCount",
                **lost,
            },
        ),
        "PairDegraded": (
            f"a member's peer dead for {NODE_DOWN_PERIODS} minutes",
            {
                "AlarmDescription": f"overlay {fleet}: pair {pair} has lost a member",
                "MetricName": PEER_UP_METRIC,
                "Statistic": "Minimum",
                **lost,
            },
        ),
        "Takeover": (
            "a takeover in the last minute",
            {
                "AlarmDescription": f"overlay {fleet}: pair {pair} was taken over",
                "MetricName": TAKEOVERS_METRIC,
                "Statistic": "Sum",
                "EvaluationPeriods": 1,
                "Threshold": 1.0,
                "ComparisonOperator": "GreaterThanOrEqualToThreshold",
                "TreatMissingData": "notBreaching",
            },
        ),
    }


def destroy(walk: Walk, region: str) -> None:
    cloudwatch = walk.client("cloudwatch", region)
    alarms = _alarms(cloudwatch, walk.name(f"{region}-"))
    if alarms:
        for alarm in alarms:
            walk.change("delete", "alarm", region, alarm)
        cloudwatch.delete_alarms(AlarmNames=alarms)
    sns = walk.client("sns", region)
    name = walk.name(f"{region}-alarms")
    for topic in _topics(sns, name):
        walk.change("delete", "sns-topic", region, name)
        sns.delete_topic(TopicArn=topic)


def _topics(sns: Any, name: str) -> list[str]:  # noqa: ANN401
    """The ARNs of the topics called ``name``."""
    arns = [topic["TopicArn"] for topic in sns.list_topics()["Topics"]]
    return [arn for arn in arns if arn.endswith(f":{name}")]


def _alarms(cloudwatch: Any, prefix: str) -> list[str]:  # noqa: ANN401
    return [
        alarm["AlarmName"]
        for alarm in cloudwatch.describe_alarms(AlarmNamePrefix=prefix)["MetricAlarms"]
    ]
