"""Process exit codes a scheduler or wrapper script can act on.

``PREEMPTED_EXIT_CODE`` (75, ``EX_TEMPFAIL`` in sysexits.h: "try again later") means: a signal asked
the job to stop, a committed checkpoint was written, relaunching the same command continues the run.
``DIVERGED_EXIT_CODE`` means the divergence guard aborted (too many consecutive non-finite steps and
``train.on_divergence: abort``, or rollback impossible); relaunching will not help without a change.
Configuration/user errors keep exit code 2 (see ``launch.cli.main``).
"""

PREEMPTED_EXIT_CODE = 75
DIVERGED_EXIT_CODE = 3
