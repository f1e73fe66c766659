package io.matchx.cluster;

import io.aeron.security.SessionProxy;
import org.junit.jupiter.api.Test;

import java.nio.charset.StandardCharsets;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

class TokenAuthenticatorTest
{
    /** Records what the authenticator decided; its egress refuses the first challenges. */
    static final class RecordingSession implements SessionProxy
    {
        final long sessionId;
        int refusals;
        byte[] challenge;
        byte[] principal;
        boolean rejected;

        RecordingSession(final long sessionId, final int refusals)
        {
            this.sessionId = sessionId;
            this.refusals = refusals;
        }

        public long sessionId()
        {
            return sessionId;
        }

        public boolean challenge(final byte[] encodedChallenge)
        {
            if (refusals > 0)
            {
                refusals--;
                return false;
            }
            challenge = encodedChallenge;
            return true;
        }

        public boolean authenticate(final byte[] encodedPrincipal)
        {
            principal = encodedPrincipal;
            return true;
        }

        public void reject()
        {
            rejected = true;
        }
    }

    private static final CredentialsVerifier VERIFIER = (credentials, nowMs) ->
        "good".equals(new String(credentials, StandardCharsets.UTF_8)) ?
        new byte[] {0, 'p'} : ("\u0001revoked").getBytes(StandardCharsets.UTF_8);

    @Test
    void aBadTokenIsChallengedWithItsReasonEvenWhenTheEgressRefusesAtFirst()
    {
        final TokenAuthenticator auth = new TokenAuthenticator(VERIFIER);
        auth.onConnectRequest(7, "bad".getBytes(StandardCharsets.UTF_8), 0);
        final RecordingSession session = new RecordingSession(7, 2);
        for (int call = 0; call < 3; call++)  // Aeron calls again while the session is connected
        {
            auth.onConnectedSession(session, call);
            assertFalse(session.rejected, "rejected without its reason on call " + call);
        }
        assertArrayEquals("rejected:revoked".getBytes(StandardCharsets.UTF_8), session.challenge);
        auth.onChallengeResponse(7, new byte[0], 3);
        auth.onChallengedSession(session, 4);
        assertTrue(session.rejected);
    }

    @Test
    void aGoodTokenIsAuthenticatedWithItsPrincipalAndAnUnknownSessionIsRejected()
    {
        final TokenAuthenticator auth = new TokenAuthenticator(VERIFIER);
        auth.onConnectRequest(8, "good".getBytes(StandardCharsets.UTF_8), 0);
        final RecordingSession good = new RecordingSession(8, 0);
        auth.onConnectedSession(good, 1);
        assertArrayEquals(new byte[] {'p'}, good.principal);
        assertNull(good.challenge);
        assertFalse(good.rejected);

        final RecordingSession unknown = new RecordingSession(9, 0);
        auth.onConnectedSession(unknown, 1);
        assertTrue(unknown.rejected);
    }
}
