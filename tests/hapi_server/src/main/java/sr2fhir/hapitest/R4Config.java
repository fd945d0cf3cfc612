package sr2fhir.hapitest;

import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Import;

import ca.uhn.fhir.jpa.config.r4.JpaR4Config;

/** The R4 DAOs, resource providers and system provider. */
@Configuration
@Import(JpaR4Config.class)
public class R4Config {}
