#!/bin/sh
# coffer-backup: nightly backup of a running coffer, run by coffer-backup.service as the
# `coffer` user. Install: install -m 0755 coffer-backup.sh /usr/local/lib/coffer/coffer-backup
#
# 1. coffer backup        the running server writes an encrypted snapshot (admin socket)
# 2. coffer restore --check  the file is opened end to end with the key file + passphrase
# 3. coffer audit verify  the audit chain is intact; its head hash goes to the journal and
#                         to S3 beside the backup (a cut-off end of the log is detectable
#                         only against a head hash kept elsewhere)
# 4. aws s3 cp            both files to the Object Lock bucket
# 5. local copies older than COFFER_BACKUP_KEEP_DAYS are deleted
#
# Settings come from /etc/coffer/backup.env (EnvironmentFile= of the unit):
#   COFFER_BACKUP_S3=s3://BUCKET/PREFIX   required, no trailing slash
#   COFFER_BACKUP_KEEP_DAYS=3             optional, local copies kept (default 3)
#   COFFER_BACKUP_DIR=...                 optional, default /var/lib/coffer/backups (coffer.service
#                                         must be able to write it: ReadWritePaths=)
#   AWS_DEFAULT_REGION=eu-central-1       the bucket's region
set -eu

: "${COFFER_BACKUP_S3:?set COFFER_BACKUP_S3=s3://BUCKET/PREFIX in /etc/coffer/backup.env}"
keep_days=${COFFER_BACKUP_KEEP_DAYS:-3}
dir=${COFFER_BACKUP_DIR:-/var/lib/coffer/backups}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
name="coffer-$stamp"

echo "backup $name: start"
coffer backup --out "$dir/$name.cbk"
coffer restore --check "$dir/$name.cbk"

# A broken audit chain must not stop the backup from leaving the machine: remember the
# failure, upload, then fail the unit.
audit_rc=0
coffer audit verify > "$dir/$name.audit.txt" 2>&1 || audit_rc=$?
cat "$dir/$name.audit.txt"

aws s3 cp --only-show-errors --checksum-algorithm SHA256 \
  "$dir/$name.cbk" "$COFFER_BACKUP_S3/$name.cbk"
aws s3 cp --only-show-errors --checksum-algorithm SHA256 \
  "$dir/$name.audit.txt" "$COFFER_BACKUP_S3/$name.audit.txt"
echo "backup $name: uploaded to $COFFER_BACKUP_S3/$name.cbk"

find "$dir" -maxdepth 1 -type f \( -name 'coffer-*.cbk' -o -name 'coffer-*.audit.txt' \) \
  -mtime +"$keep_days" -delete

if [ "$audit_rc" -ne 0 ]; then
  echo "backup $name: AUDIT LOG CHECK FAILED (exit $audit_rc): see above; the backup itself was uploaded" >&2
  exit "$audit_rc"
fi
echo "backup $name: done"
