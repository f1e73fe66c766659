package io.matchx.cluster;

import io.aeron.cluster.ClusterMember;
import io.aeron.cluster.ConsensusModule;
import io.aeron.cluster.ElectionState;

import io.aeron.cluster.service.Cluster;
import org.agrona.concurrent.IdleStrategy;
import org.agrona.concurrent.NoOpIdleStrategy;
import org.junit.jupiter.api.Test;

import java.lang.reflect.Field;
import java.lang.reflect.Modifier;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.function.BooleanSupplier;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

class ElectionTimingTest
{
    /** An Aeron upgrade that renames these would quietly leave catch-up progress at 120 ms. */
    @Test
    void theConsensusModuleFieldsItSetsExist() throws Exception
    {
        final Field conductor = ConsensusModule.class.getDeclaredField("conductor");
        final Class<?> agent = Class.forName("io.aeron.cluster.ConsensusModuleAgent");
        assertEquals(agent, conductor.getType());
        final Field timeout = agent.getDeclaredField("leaderHeartbeatTimeoutNs");
        assertEquals(long.class, timeout.getType());
        assertFalse(Modifier.isStatic(timeout.getModifiers()));
    }

    @Test
    void onlyTheStepsAfterTheVoteGetTheProgressDeadline()
    {
        for (final ElectionState s : new ElectionState[]{
            ElectionState.INIT, ElectionState.CANVASS, ElectionState.NOMINATE, ElectionState.CANDIDATE_BALLOT,
            ElectionState.CLOSED})
        {
            assertFalse(ElectionTiming.isProgressStep(s), s.name());
        }
        for (final ElectionState s : new ElectionState[]{
            ElectionState.FOLLOWER_BALLOT, ElectionState.LEADER_LOG_REPLICATION, ElectionState.LEADER_READY,
            ElectionState.FOLLOWER_LOG_REPLICATION,
            ElectionState.FOLLOWER_CATCHUP_AWAIT, ElectionState.FOLLOWER_CATCHUP, ElectionState.FOLLOWER_LOG_AWAIT,
            ElectionState.FOLLOWER_READY})
        {
            assertTrue(ElectionTiming.isProgressStep(s), s.name());
        }
    }

    /**
     * A voter waits for the leader it voted for at least BALLOT_WAIT_MS: with the 20 ms election
     * timeout a voter's wait ran out under load and, back in CANVASS, it replicated an older
     * term's leader (bench/reports/stuck_election.md). Only a candidate's wait is the intended one.
     */
    @Test
    void onlyACandidateWaitsTheIntendedElectionTimeout()
    {
        final long intended = TimeUnit.MILLISECONDS.toNanos(20);
        final long ballot = ElectionTiming.ballotWaitNs(intended);
        assertEquals(TimeUnit.MILLISECONDS.toNanos(ElectionTiming.BALLOT_WAIT_MS), ballot);
        assertEquals(intended, ElectionTiming.electionTimeoutIn(ElectionState.CANDIDATE_BALLOT, intended, ballot));
        for (final ElectionState s : ElectionState.values())
        {
            if (s != ElectionState.CANDIDATE_BALLOT)
            {
                assertEquals(ballot, ElectionTiming.electionTimeoutIn(s, intended, ballot), s.name());
            }
        }
        // a configured timeout longer than the ballot wait is kept everywhere
        final long longer = TimeUnit.SECONDS.toNanos(3);
        assertEquals(longer, ElectionTiming.ballotWaitNs(longer));
        assertEquals(longer, ElectionTiming.electionTimeoutIn(ElectionState.FOLLOWER_BALLOT, longer,
            ElectionTiming.ballotWaitNs(longer)));
    }

    /** The fields a candidate's vote wait reads; renamed by an Aeron upgrade, the wait would quietly be the short one. */
    @Test
    void theElectionFieldsItReadsExist() throws Exception
    {
        final Class<?> agent = Class.forName("io.aeron.cluster.ConsensusModuleAgent");
        final Field election = agent.getDeclaredField("election");
        assertEquals(Class.forName("io.aeron.cluster.Election"), election.getType());
        assertEquals(ClusterMember[].class, election.getType().getDeclaredField("clusterMembers").getType());
    }

    private static ClusterMember[] members(final Boolean... votes)
    {
        final ClusterMember[] members = new ClusterMember[votes.length];
        for (int i = 0; i < votes.length; i++)
        {
            members[i] = new ClusterMember(i, "i", "c", "l", "u", "a", "e").vote(votes[i]);
        }
        return members;
    }

    /**
     * A candidate keeps waiting while no voter has answered (a late "yes" would otherwise strand
     * its voter in FOLLOWER_BALLOT for a second), and not once the ballot can be decided.
     */
    @Test
    void aCandidateWaitsLongerOnlyWhileTooFewVotersHaveAnswered()
    {
        // member 0 is the candidate (its own vote is TRUE); member 2 is dead and never answers
        assertTrue(ElectionTiming.votesOutstanding(members(true, null, null), 0));
        assertFalse(ElectionTiming.votesOutstanding(members(true, true, null), 0));
        assertFalse(ElectionTiming.votesOutstanding(members(true, false, null), 0), "a split vote ends at once");
        // five members: two yes votes besides its own make a quorum
        assertTrue(ElectionTiming.votesOutstanding(members(true, true, null, null, null), 0));
        assertFalse(ElectionTiming.votesOutstanding(members(true, true, null, true, null), 0));
        assertFalse(ElectionTiming.votesOutstanding(members(true, null, false, null, null), 0));

        final long intended = TimeUnit.MILLISECONDS.toNanos(20);
        final long ballot = ElectionTiming.ballotWaitNs(intended);
        final long voteWait = TimeUnit.MILLISECONDS.toNanos(ElectionTiming.CANDIDATE_VOTE_WAIT_MS);
        assertTrue(voteWait < ballot, "a candidate gives up before its voter does");
        assertEquals(voteWait, ElectionTiming.electionTimeoutIn(
            ElectionState.CANDIDATE_BALLOT, intended, ballot, true, voteWait));
        assertEquals(intended, ElectionTiming.electionTimeoutIn(
            ElectionState.CANDIDATE_BALLOT, intended, ballot, false, voteWait));
        assertEquals(ballot, ElectionTiming.electionTimeoutIn(
            ElectionState.FOLLOWER_BALLOT, intended, ballot, true, voteWait), "a voter's wait is unchanged");
    }

    /** Before launch the context holds the voter's wait, and a nomination still waits a fraction of the intended timeout. */
    @Test
    void theContextHoldsTheBallotWaitAndNominationsKeepTheirDelay()
    {
        final ConsensusModule.Context ctx = new ConsensusModule.Context()
            .electionTimeoutNs(TimeUnit.MILLISECONDS.toNanos(20))
            .leaderHeartbeatTimeoutNs(TimeUnit.MILLISECONDS.toNanos(120));
        final int[] leader = {2};
        final NominationOrder order = new NominationOrder(1, 3, () -> leader[0]);
        ctx.random(order);
        final ElectionTiming timing = ElectionTiming.beforeLaunch(ctx, "[test]");
        assertEquals(TimeUnit.MILLISECONDS.toNanos(ElectionTiming.BALLOT_WAIT_MS), ctx.electionTimeoutNs());
        // at start the intended timeout is the start-up one (300 ms): member 1 is not the preferred
        // survivor of leader 2 (member 0 is), so it waits just under half of it, as Aeron computes it
        final double delayMs = ctx.random().nextDouble() * (ctx.electionTimeoutNs() >> 1) / 1e6;
        assertEquals(NominationOrder.LATER * ElectionTiming.START_ELECTION_TIMEOUT_MS / 2, delayMs, 0.01);
        assertEquals(TimeUnit.MILLISECONDS.toNanos(ElectionTiming.START_ELECTION_TIMEOUT_MS),
            timing.intendedElectionTimeoutNs());
        assertEquals(0.25, NominationOrder.scaled(0.5, 10, 20), 1e-12);
        assertEquals(0.5, NominationOrder.scaled(0.5, 0, 20), 1e-12);
        assertEquals(0.5, NominationOrder.scaled(0.5, 30, 20), 1e-12);
    }

    /**
     * Outside an election a warm member's sampler does not poll (it woke 200 times a second for
     * nothing: idle CPU), yet an election that begins is seen at once: the consensus module's
     * idle strategy wakes it when the state counter changes, and it then sets the step's deadline.
     */
    @Test
    void aWarmSamplerWaitsOutsideElectionsAndAStateChangeWakesIt() throws Exception
    {
        final ConsensusModule.Context ctx = new ConsensusModule.Context()
            .electionTimeoutNs(TimeUnit.MILLISECONDS.toNanos(20))
            .leaderHeartbeatTimeoutNs(TimeUnit.MILLISECONDS.toNanos(120));
        final ElectionTiming timing = ElectionTiming.beforeLaunch(ctx, "[test]");
        final AtomicLong state = new AtomicLong(ElectionState.CLOSED.code());
        final IdleStrategy consensusIdle = timing.wakeOnChange(NoOpIdleStrategy.INSTANCE, state::get);
        timing.quietPollMs(TimeUnit.MINUTES.toMillis(10));  // only a wake-up can end the wait
        timing.start(new WatchedCounter(state::get, () -> false),
            new WatchedCounter(() -> Cluster.Role.FOLLOWER.code(), () -> false));
        try
        {
            // warm a second after it is first in step; then quiet
            awaitTrue(() -> timing.samples() > 0, 10_000);
            Thread.sleep(ElectionTiming.WARM_AFTER_IN_STEP_MS + 500);
            final long before = timing.samples();
            Thread.sleep(1_000);
            assertTrue(timing.samples() - before <= 1, "samples in a quiet second: " + (timing.samples() - before));

            // a vote: the consensus module's next duty cycle ends in its idle strategy
            state.set(ElectionState.FOLLOWER_BALLOT.code());
            consensusIdle.idle(1);
            awaitTrue(() -> ctx.leaderHeartbeatTimeoutNs() ==
                TimeUnit.MILLISECONDS.toNanos(ElectionTiming.PROGRESS_TIMEOUT_MS), 10_000);

            // inside an election it samples every POLL_MS again
            final long inElection = timing.samples();
            Thread.sleep(1_000);
            assertTrue(timing.samples() - inElection >= 5, "samples in an election's second: " +
                (timing.samples() - inElection));

            // back in step: the configured detection again, at the change
            state.set(ElectionState.CLOSED.code());
            consensusIdle.idle(0);
            awaitTrue(() -> ctx.leaderHeartbeatTimeoutNs() == TimeUnit.MILLISECONDS.toNanos(120), 10_000);
        }
        finally
        {
            state.set(WatchedCounter.CLOSED);  // the sampler returns at its next sample
            consensusIdle.idle(0);
        }
    }

    private static void awaitTrue(final BooleanSupplier condition, final long timeoutMs) throws InterruptedException
    {
        final long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMs);
        while (!condition.getAsBoolean())
        {
            assertTrue(System.nanoTime() < deadline, "not within " + timeoutMs + " ms");
            Thread.sleep(1);
        }
    }
}
