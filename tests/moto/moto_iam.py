#!/usr/bin/env python3
"""Drives a moto IAM/STS server for rotate-host's conformance tests and quickstart.

Independent of rotate-host: it uses boto3. The first three calls against a fresh
server (INITIAL_NO_AUTH_ACTION_COUNT=3) create an administrator; every later call
is signed with that administrator's key, so moto checks signatures and policies.

Commands print JSON on stdout:
  bootstrap                        create the administrator; print its key
  user NAME [--policy-on TARGET] [--also ACTION]...
                                   create a user; with --policy-on, give it the
                                   user guide's four actions (Resource "*": moto
                                   matches resources against "*", see README),
                                   plus each --also action
  create-key NAME                  create an access key; print id and secret
  deactivate NAME KEY_ID           mark a key Inactive
  keys NAME                        list the user's key ids and statuses
  whoami KEY_ID SECRET             STS GetCallerIdentity with that key
  unsigned-next N                  let the next N requests through unsigned (for
                                   AssumeRoleWithWebIdentity, which is unsigned);
                                   moto checks every later one again
  role NAME KEY_ID SECRET          create role NAME that the key's user may assume,
                                   with the guide's four actions; print its ARN
  assume-role NAME KEY_ID SECRET   the same, then assume it with that key; print
                                   the temporary credentials
"""

import argparse
import json
import os
import sys

import boto3
import botocore.config
import botocore.exceptions

GUIDE_ACTIONS = [
    "iam:ListAccessKeys",
    "iam:CreateAccessKey",
    "iam:DeleteAccessKey",
    "iam:GetUser",
]


def allow(actions):
    """An identity policy document allowing `actions` on every resource."""
    return json.dumps({"Version": "2012-10-17",
                       "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]})


def client(service, endpoint, key=None, secret=None):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key or os.environ.get("MOTO_ADMIN_KEY", "bootstrap"),
        aws_secret_access_key=secret or os.environ.get("MOTO_ADMIN_SECRET", "bootstrap"),
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("bootstrap")
    u = sub.add_parser("user")
    u.add_argument("name")
    u.add_argument("--policy-on")
    u.add_argument("--also", action="append", default=[])
    k = sub.add_parser("create-key")
    k.add_argument("name")
    d = sub.add_parser("deactivate")
    d.add_argument("name")
    d.add_argument("key_id")
    ls = sub.add_parser("keys")
    ls.add_argument("name")
    n = sub.add_parser("unsigned-next")
    n.add_argument("count")
    w = sub.add_parser("whoami")
    w.add_argument("key_id")
    w.add_argument("secret")
    for cmd in ("role", "assume-role"):
        r = sub.add_parser(cmd)
        r.add_argument("name")
        r.add_argument("key_id")
        r.add_argument("secret")
    a = p.parse_args()

    iam = client("iam", a.endpoint)
    if a.cmd == "bootstrap":
        iam.create_user(UserName="moto-admin")
        iam.put_user_policy(
            UserName="moto-admin",
            PolicyName="admin",
            PolicyDocument=allow("*"),
        )
        key = iam.create_access_key(UserName="moto-admin")["AccessKey"]
        out = {"key_id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
    elif a.cmd == "user":
        arn = iam.create_user(UserName=a.name)["User"]["Arn"]
        if a.policy_on:
            iam.put_user_policy(
                UserName=a.name,
                PolicyName="rotate-access-keys",
                PolicyDocument=allow(GUIDE_ACTIONS + a.also),
            )
        out = {"arn": arn}
    elif a.cmd == "create-key":
        key = iam.create_access_key(UserName=a.name)["AccessKey"]
        out = {"key_id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
    elif a.cmd == "deactivate":
        iam.update_access_key(UserName=a.name, AccessKeyId=a.key_id, Status="Inactive")
        out = {}
    elif a.cmd == "keys":
        meta = iam.list_access_keys(UserName=a.name)["AccessKeyMetadata"]
        out = [{"id": m["AccessKeyId"], "status": m["Status"]} for m in meta]
    elif a.cmd == "unsigned-next":
        import urllib.request
        urllib.request.urlopen(urllib.request.Request(
            a.endpoint + "/moto-api/reset-auth", data=a.count.encode(), method="POST",
            # Not a form: werkzeug would consume a form body before moto reads it.
            headers={"Content-Type": "text/plain"}))
        out = {}
    elif a.cmd == "whoami":
        try:
            arn = client("sts", a.endpoint, a.key_id, a.secret).get_caller_identity()["Arn"]
            out = {"arn": arn}
        except botocore.exceptions.ClientError as e:
            out = {"error": e.response["Error"]["Code"]}
    elif a.cmd in ("role", "assume-role"):
        caller = client("sts", a.endpoint, a.key_id, a.secret).get_caller_identity()["Arn"]
        role = iam.create_role(
            RoleName=a.name,
            AssumeRolePolicyDocument=json.dumps(
                {"Version": "2012-10-17",
                 "Statement": [{"Effect": "Allow", "Principal": {"AWS": caller},
                                "Action": "sts:AssumeRole"}]}
            ),
        )["Role"]
        iam.put_role_policy(
            RoleName=a.name,
            PolicyName="rotate-access-keys",
            PolicyDocument=allow(GUIDE_ACTIONS),
        )
        # The caller needs sts:AssumeRole on the role too, as in real IAM.
        iam.put_user_policy(
            UserName=caller.rsplit("/", 1)[1],
            PolicyName="assume-" + a.name,
            PolicyDocument=allow("sts:AssumeRole"),
        )
        if a.cmd == "role":
            out = {"arn": role["Arn"]}
        else:
            creds = client("sts", a.endpoint, a.key_id, a.secret).assume_role(
                RoleArn=role["Arn"], RoleSessionName="rotate-host-test"
            )["Credentials"]
            out = {"key_id": creds["AccessKeyId"], "secret": creds["SecretAccessKey"],
                   "token": creds["SessionToken"]}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
