import { M2mError } from '../errors.js';

/**
 * No valid access token could be had before the caller's deadline (the IdP is down or slow, or
 * the token manager stopped). The proxy answers it with 503 `token_unavailable`.
 */
export class TokenUnavailableError extends M2mError {
  readonly code = 'token_unavailable';

  constructor(message = 'no valid access token before the deadline') {
    super(message);
  }
}
