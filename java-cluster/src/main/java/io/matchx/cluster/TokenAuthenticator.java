package io.matchx.cluster;

import io.aeron.security.Authenticator;
import io.aeron.security.SessionProxy;
import org.agrona.collections.Long2ObjectHashMap;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;

/**
 * Aeron's authenticator hook, on the leader's consensus-module thread: verifies the token once
 * per session and makes the principal the session's encoded principal, which reaches every
 * member's service through the log.
 *
 * <p>{@link SessionProxy#reject()} carries no reason, so a bad token is first answered with a
 * challenge whose bytes are {@code "rejected:" + reason}; the client SDK records the reason,
 * answers, and is then rejected (AUTHENTICATION_REJECTED). That way the client can say why.
 */
public final class TokenAuthenticator implements Authenticator
{
    static final byte[] REJECTED_PREFIX = "rejected:".getBytes(StandardCharsets.US_ASCII);
    /** Sessions that never finish connecting must not grow these maps without bound. */
    static final int MAX_PENDING = 10_000;

    private final CredentialsVerifier verifier;
    private final Long2ObjectHashMap<byte[]> verdicts = new Long2ObjectHashMap<>();
    private final Long2ObjectHashMap<Boolean> challenged = new Long2ObjectHashMap<>();

    public TokenAuthenticator(final CredentialsVerifier verifier)
    {
        this.verifier = verifier;
    }

    public void onConnectRequest(final long sessionId, final byte[] encodedCredentials, final long nowMs)
    {
        if (verdicts.size() >= MAX_PENDING)
        {
            verdicts.clear();
        }
        byte[] verdict;
        try
        {
            verdict = verifier.verify(encodedCredentials, nowMs);
        }
        catch (final RuntimeException ex)
        {
            verdict = ("\u0001internal_error").getBytes(StandardCharsets.UTF_8);
        }
        if (null == verdict || verdict.length == 0)
        {
            verdict = ("\u0001internal_error").getBytes(StandardCharsets.UTF_8);
        }
        verdicts.put(sessionId, verdict);
    }

    public void onChallengeResponse(final long sessionId, final byte[] encodedCredentials, final long nowMs)
    {
        if (challenged.size() >= MAX_PENDING)
        {
            challenged.clear();
        }
        challenged.put(sessionId, Boolean.TRUE);
    }

    public void onConnectedSession(final SessionProxy sessionProxy, final long nowMs)
    {
        final long sessionId = sessionProxy.sessionId();
        final byte[] verdict = verdicts.get(sessionId);
        if (null == verdict)
        {
            sessionProxy.reject();
            return;
        }
        if (verdict[0] == 0)
        {
            verdicts.remove(sessionId);
            sessionProxy.authenticate(Arrays.copyOfRange(verdict, 1, verdict.length));
        }
        else
        {
            final byte[] challenge = new byte[REJECTED_PREFIX.length + verdict.length - 1];
            System.arraycopy(REJECTED_PREFIX, 0, challenge, 0, REJECTED_PREFIX.length);
            System.arraycopy(verdict, 1, challenge, REJECTED_PREFIX.length, verdict.length - 1);
            // The egress may refuse the challenge for now (back pressure): keep the verdict, Aeron
            // calls again while the session is connected (up to its session timeout). Rejecting
            // here instead would reach the client without its reason.
            if (sessionProxy.challenge(challenge))
            {
                verdicts.remove(sessionId);
            }
        }
    }

    public void onChallengedSession(final SessionProxy sessionProxy, final long nowMs)
    {
        if (null != challenged.remove(sessionProxy.sessionId()))
        {
            sessionProxy.reject();
        }
    }
}
