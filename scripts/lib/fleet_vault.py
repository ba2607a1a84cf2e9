#!/usr/bin/env python3
"""Builds the vaults of scripts/bench's fleet figures against moto.

  users ENDPOINT N OUT.json CONFIG.json   create IAM users fleet0..fleetN-1 with one
                                          key each; write a vault holding CONFIG.json's
                                          config record and a fleet record per user
  due VAULT.json                          make every fleet record due again
                                          (drop Last Rotated and Rotation Pending)
  pad VAULT.json TOTAL OUT.json           add non-fleet PAM users up to TOTAL records
  fake FAKE.json OUT.json                 a fleet vault for the users `fake-iam` printed

Admin credentials come from MOTO_ADMIN_KEY / MOTO_ADMIN_SECRET (scripts/lib/moto.sh).
"""

import json
import os
import sys

import boto3


def users(endpoint, n, out, config):
    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=os.environ["MOTO_ADMIN_KEY"],
        aws_secret_access_key=os.environ["MOTO_ADMIN_SECRET"],
    )
    records = [json.load(open(config))]
    # A pass serves only the logins the config's owner declares.
    records[0].setdefault("custom", []).append(
        {"type": "multiline", "label": "Rotation Scope", "value": ["fleet*"]})
    for i in range(n):
        name = f"fleet{i}"
        iam.create_user(UserName=name)
        key = iam.create_access_key(UserName=name)["AccessKey"]["AccessKeyId"]
        records.append({
            "uid": f"u-{name}", "type": "pamUser", "title": name,
            "fields": [{"type": "login", "value": [name]}],
            "custom": [{"type": "text", "label": "aws_access_key_id", "value": [key]},
                       {"type": "text", "label": "Rotation Config", "value": [records[0]["uid"]]}],
        })
    json.dump({"records": records}, open(out, "w"))


def due(path):
    doc = json.load(open(path))
    for r in doc["records"]:
        r["custom"] = [f for f in r.get("custom", [])
                       if f.get("label") not in ("Last Rotated", "Rotation Pending")]
    json.dump(doc, open(path, "w"))


def pad(path, total, out, members=False):
    """Adds PAM users up to `total` records; with `members`, each is a fleet
    member of the first record's config (not due), as in a real vault."""
    doc = json.load(open(path))
    config = doc["records"][0]["uid"]
    for i in range(total - len(doc["records"])):
        # Each holds a secret, as a real member does: vetting sees them all.
        custom = [{"type": "text", "label": "aws_access_key_id", "value": [f"AKIAFILLER{i:010d}"]},
                  {"type": "secret", "label": "aws_secret_access_key",
                   "value": [f"fillerSecret/{i:010d}+abcdefghijklmnopq"]}]
        if members:
            custom += [{"type": "text", "label": "Rotation Config", "value": [config]},
                       {"type": "text", "label": "Last Rotated", "value": ["2099-01-01T00:00:00Z"]}]
        doc["records"].append({
            "uid": f"filler{i:07d}", "type": "pamUser", "title": f"fleetfiller{i}",
            "fields": [{"type": "login", "value": [f"fleetfiller{i}"]}],
            "custom": custom,
        })
    json.dump(doc, open(out, "w"))


def fake(spec, out):
    f = json.load(open(spec))
    records = [{"uid": "cfg1", "type": "login", "title": "fake", "fields": [], "custom": [
        {"type": "text", "label": "SaaS Type", "value": ["AWS Secret Key"]},
        {"type": "multiline", "label": "Rotation Scope", "value": ["fleet*"]},
        {"type": "text", "label": "Client ID", "value": [f["rotator_id"]]},
        {"type": "secret", "label": "Client Secret", "value": [f["rotator_secret"]]},
        {"type": "text", "label": "AWS Region", "value": ["us-east-1"]},
        {"type": "url", "label": "AWS Endpoint URL", "value": [f["url"]]}]}]
    for i, key in enumerate(f["keys"]):
        records.append({
            "uid": f"u-fleet{i}", "type": "pamUser", "title": f"fleet{i}",
            "fields": [{"type": "login", "value": [f"fleet{i}"]}],
            "custom": [{"type": "text", "label": "aws_access_key_id", "value": [key]},
                       {"type": "text", "label": "Rotation Config", "value": ["cfg1"]}],
        })
    json.dump({"records": records}, open(out, "w"))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "users":
        users(args[0], int(args[1]), args[2], args[3])
    elif cmd == "due":
        due(args[0])
    elif cmd == "pad":
        pad(args[0], int(args[1]), args[2], members=args[3:] == ["members"])
    elif cmd == "fake":
        fake(args[0], args[1])
    else:
        sys.exit(f"unknown command {cmd}")
