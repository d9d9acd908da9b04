"""Use cases: one function per thing the portal or a link can do, run in one transaction.

Each use case takes a Unit (the open transaction, the time, who acts, the policy) and
writes its side effects (mails, applies) to the outbox and apply queue in that same
transaction, so a rollback leaves nothing to send and nothing to reload.
"""
