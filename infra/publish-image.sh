#!/usr/bin/env bash
# Pushes the task image that infra/build-image.sh laid out to Amazon ECR,
# without a Docker daemon (skopeo), and prints the image URI pinned by its
# digest: the value for the template's image parameter.
#
#   infra/publish-image.sh ACCOUNT_ID REGION REPOSITORY [TAG]
#
# Logs in with the AWS CLI's credentials (`aws ecr get-login-password`);
# the repository must exist (`aws ecr create-repository`). The layout is
# target/image/oci unless PGBACKUP_IMAGE_LAYOUT says otherwise. Needs an
# AWS account: not run by the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 3 ] || [ $# -gt 4 ]; then
  sed -n '6p' "$0" | sed 's/^# *//' >&2
  exit 64
fi
account=$1 region=$2 repository=$3 tag=${4:-latest}
layout=${PGBACKUP_IMAGE_LAYOUT:-target/image/oci}
[[ $account =~ ^[0-9]{12}$ ]] || { echo "publish-image.sh: $account is not a 12-digit account id" >&2; exit 64; }
[[ $region =~ ^[a-z]{2}(-[a-z]+)+-[0-9]$ ]] || { echo "publish-image.sh: $region is not a region name" >&2; exit 64; }
[ -f "$layout/oci-layout" ] || { echo "publish-image.sh: no OCI layout at $layout (run infra/build-image.sh)" >&2; exit 64; }

registry=$account.dkr.ecr.$region.amazonaws.com
digest_file=$(mktemp)
trap 'rm -f "$digest_file"' EXIT
aws ecr get-login-password --region "$region" |
  skopeo login --username AWS --password-stdin "$registry"
skopeo copy --digestfile "$digest_file" "oci:$layout:$tag" "docker://$registry/$repository:$tag"
echo "$registry/$repository@$(cat "$digest_file")"
