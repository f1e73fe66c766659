package io.matchx.cluster;

import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;

/**
 * Takes snapshots on a schedule: when {@code snapshot.interval.s} has passed since this member's
 * last snapshot (or its start), or the log has grown by {@code snapshot.log.bytes} since then,
 * whichever comes first, and only if the log grew at all (an idle cluster is not snapshotted over
 * and over). Only a leader's request has an effect; every member checks, so whoever leads keeps
 * the schedule without any hand-over.
 *
 * <p>Why both: a restarted member loads its latest snapshot and replays the log after it, so the
 * time it needs to come back grows with that log. Time alone lets a busy cluster pile up a long
 * log between snapshots; size alone lets a quiet one go hours without one. One daemon thread per
 * process serves every member the process hosts (a worker hosts several).
 */
final class SnapshotSchedule implements AutoCloseable
{
    /** How often the conditions are checked; a snapshot is late by at most this much. */
    static final long CHECK_INTERVAL_MS = 250;

    private ScheduledExecutorService scheduler;

    /**
     * Checks {@code service}'s snapshot conditions every {@link #CHECK_INTERVAL_MS} and calls
     * {@code takeSnapshot} (which acts only on the leader) when they hold. No-op when both
     * settings are 0. Returns the check's future (cancel it when the member leaves), or null.
     */
    synchronized Future<?> add(final MemberSettings settings, final MatchService service, final BooleanSupplier takeSnapshot)
    {
        if (settings.snapshotIntervalS <= 0 && settings.snapshotLogBytes <= 0)
        {
            return null;
        }
        if (null == scheduler)
        {
            scheduler = Executors.newSingleThreadScheduledExecutor((r) ->
            {
                final Thread t = new Thread(r, "matchx-snapshot-schedule");
                t.setDaemon(true);
                return t;
            });
        }
        final long intervalNs = TimeUnit.SECONDS.toNanos(settings.snapshotIntervalS);
        return scheduler.scheduleWithFixedDelay(
            () ->
            {
                try
                {
                    if (due(intervalNs, settings.snapshotLogBytes,
                        service.nanosSinceSnapshot(System.nanoTime()), service.logSinceSnapshot()))
                    {
                        takeSnapshot.getAsBoolean();
                    }
                }
                catch (final RuntimeException ex)
                {
                    MemberNode.logError(ex);
                }
            },
            CHECK_INTERVAL_MS, CHECK_INTERVAL_MS, TimeUnit.MILLISECONDS);
    }

    /**
     * Whether a snapshot is due: the log grew since the last one, and either the interval passed
     * or the growth reached the byte threshold (a setting of 0 turns that condition off).
     */
    static boolean due(final long intervalNs, final long logBytes, final long sinceNs, final long logGrowth)
    {
        if (logGrowth <= 0)
        {
            return false;
        }
        return (intervalNs > 0 && sinceNs >= intervalNs) || (logBytes > 0 && logGrowth >= logBytes);
    }

    public synchronized void close()
    {
        if (null != scheduler)
        {
            scheduler.shutdownNow();
            scheduler = null;
        }
    }
}
